"""One answer per clip: the same recordings through every door give the same scores.

Clips shorter than, equal to and longer than the model's window (a silence-then-speech clip and a 60 s recording
among them) go through `predict --json`, `predict --output` shards, `Classifier` in Python, `POST /v1/classify`,
`evaluate`'s per-clip predictions and the ONNX export. Every door gives the same top-1 and the same scores (1e-5;
1e-4 for ONNX), and `evaluate`'s accuracy is the accuracy of `predict`'s labels. A model's own `metrics.json` test
figures equal what `evaluate` measures on the same clips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import audioclf
from audioclf.cli import app
from audioclf.config import DataSpec, ModelOptions
from audioclf.scale import read_results
from audioclf.serve import ServeSettings, create_app
from audioclf.testing import class_clip, make_folder_dataset, save_tone_model, tiny_train_options, write_clip
from audioclf.train import train

runner = CliRunner()
LABELS = ("low", "high", "noise")
RATE = 8000  # Hz: every door resamples to the model's 16 kHz
WINDOW_SECONDS = 1.0  # the tone model's fixed window


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


def _recording(labels: list[str], seconds_each: float, seed: int) -> np.ndarray:
    return np.concatenate([class_clip(label, seconds_each, RATE, seed=seed + i) for i, label in enumerate(labels)])


# name -> (true label, samples at RATE), two or more of each label (evaluate splits its source before taking
# all of it); the tone model hears silence as "high"
CLIPS = {
    "shorter": ("low", class_clip("low", 0.6, RATE, seed=1)),
    "equal": ("high", class_clip("high", WINDOW_SECONDS, RATE, seed=2)),
    "longer": ("noise", class_clip("noise", 2.7, RATE, seed=3)),
    "a_little_longer": ("high", class_clip("high", 1.3, RATE, seed=5)),
    "silence_then_speech": ("low", np.concatenate([_silence(1.5), class_clip("low", 3.0, RATE, seed=4)])),
    "sixty_seconds": ("noise", _recording(["noise", "low", "noise", "high", "noise", "noise"] * 2, 5.0, seed=10)),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tone_model(tmp_path_factory.mktemp("doors") / "model", "tiny-whisper", LABELS)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A label-folder data source holding CLIPS; paths sorted by name are the order of CLIPS' names sorted."""
    root = tmp_path_factory.mktemp("data")
    for name, (label, samples) in CLIPS.items():
        write_clip(root / label / f"{name}.wav", samples, RATE)
    return root


@pytest.fixture(scope="module")
def paths(data) -> dict[str, str]:
    return {name: str(data / label / f"{name}.wav") for name, (label, _) in CLIPS.items()}


def _scores(predictions: list[dict]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in predictions}


def _assert_same(doors: dict[str, dict[str, list[dict]]], reference: str, tolerance: dict[str, float]) -> None:
    for door, answers in doors.items():
        assert set(answers) == set(CLIPS), door
        for name, predictions in answers.items():
            want = doors[reference][name]
            assert predictions[0]["label"] == want[0]["label"], (door, name)
            got, expected = _scores(predictions), _scores(want)
            assert set(got) == set(LABELS), (door, name)
            for label in LABELS:
                assert got[label] == pytest.approx(expected[label], abs=tolerance.get(door, 1e-5)), (door, name, label)


def test_every_door_gives_every_clip_the_same_answer(model_dir, data, paths, tmp_path):
    by_path = {path: name for name, path in paths.items()}
    doors: dict[str, dict[str, list[dict]]] = {}

    classifier = audioclf.load_classifier(model_dir)
    assert classifier.window_seconds == WINDOW_SECONDS
    doors["python"] = {name: classifier.classify(path, top_k=None) for name, path in paths.items()}

    printed = runner.invoke(app, ["predict", str(model_dir), *paths.values(), "--json", "--top-k", "3"])
    assert printed.exit_code == 0, printed.output
    doors["predict --json"] = {by_path[row["path"]]: row["predictions"]
                               for row in map(json.loads, printed.stdout.splitlines())}

    shards = runner.invoke(app, ["predict", str(model_dir), *paths.values(), "--output", str(tmp_path / "rows"),
                                 "--top-k", "3", "-q"])
    assert shards.exit_code == 0, shards.output
    doors["predict --output"] = {by_path[row["path"]]: [{"label": l, "score": s} for l, s in zip(row["labels"],
                                                                                               row["scores"])]
                                 for row in read_results(tmp_path / "rows").to_pylist()}

    with TestClient(create_app(classifier, ServeSettings())) as client:
        doors["POST /v1/classify"] = {}
        for name, path in paths.items():
            response = client.post("/v1/classify?top_k=3", content=Path(path).read_bytes())
            assert response.status_code == 200, response.text
            doors["POST /v1/classify"][name] = response.json()["predictions"]

    evaluated = runner.invoke(app, ["evaluate", str(model_dir), "--data", str(data), "--split", "all", "--json", "-q",
                                    "--report-dir", str(tmp_path / "report")])
    assert evaluated.exit_code == 0, evaluated.output
    clips = [json.loads(line) for line in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    doors["evaluate"] = {by_path[clip["path"]]: clip["predictions"] for clip in clips}

    exported = runner.invoke(app, ["export", "onnx", str(model_dir), str(tmp_path / "onnx"), "-q"])
    assert exported.exit_code == 0, exported.output
    onnx = audioclf.load_classifier(tmp_path / "onnx")
    assert onnx.backend.kind == "onnx" and onnx.plan == classifier.plan
    doors["onnx"] = {name: onnx.classify(path, top_k=None) for name, path in paths.items()}

    _assert_same(doors, "python", {"onnx": 1e-4})

    # evaluate's accuracy is the accuracy of predict's labels
    report = json.loads(evaluated.stdout)
    predicted = {name: predictions[0]["label"] for name, predictions in doors["predict --json"].items()}
    assert report["n"] == len(CLIPS)
    assert report["accuracy"] == pytest.approx(np.mean([predicted[name] == CLIPS[name][0] for name in CLIPS]))


def test_long_clips_are_scored_in_windows_not_by_their_start(model_dir, paths):
    """What the doors agree on is the mean over windows: for the silence-then-speech clip it differs from what its
    first window alone says, so a door that read only the start would fail the test above."""
    classifier = audioclf.load_classifier(model_dir)
    scores = classifier.score(paths["silence_then_speech"])

    assert len(scores.spans) == 8 and scores.spans[-1][1] == round(4.5 * classifier.sampling_rate)
    assert scores.predictions(classifier.id2label, 1)[0]["label"] == "low"
    assert top1(scores.window_probabilities[0], classifier) == "high"  # the silent first window
    sixty = classifier.score(paths["sixty_seconds"])
    assert sixty.duration_seconds == pytest.approx(60.0) and len(sixty.spans) == 119
    np.testing.assert_allclose(sixty.probabilities, sixty.window_probabilities.mean(axis=0))


def top1(probabilities: np.ndarray, classifier) -> str:
    return classifier.id2label[int(np.argmax(probabilities))]


def test_train_metrics_are_what_evaluate_measures_on_long_clips(tmp_path):
    """metrics.json's test figures are scored like every door scores the saved model, windows and all."""
    data = make_folder_dataset(tmp_path / "data", clips_per_label=8, seconds=2.5, sampling_rate=RATE)
    output = tmp_path / "model"
    result = train(DataSpec(data=str(data)), ModelOptions(model_config="tiny-whisper"),
                   tiny_train_options(epochs=1, max_seconds=1), output, progress=False, echo=lambda line: None)

    metrics = json.loads((output / "metrics.json").read_text())
    evaluated = runner.invoke(app, ["evaluate", str(output), "--data", str(data), "--json", "-q"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)

    assert result.metrics["window_seconds"] == 1.0  # every clip is longer than the window
    assert metrics["test"]["n"] == report["n"] == 6
    assert metrics["test"]["accuracy"] == pytest.approx(report["accuracy"], abs=1e-12)
    assert metrics["test"]["macro_f1"] == pytest.approx(report["macro_f1"], abs=1e-12)
    assert metrics["test"]["loss"] == pytest.approx(report["loss"], abs=1e-5)
    assert "first window" in metrics["scoring"]["validation"] and "every window" in metrics["scoring"]["test"]
