"""The `evaluate` and `predict` commands on one tiny trained model: evaluate's numbers are scikit-learn's on the
model's own predictions, the report files are written, and predict prints one JSON line per file, in order,
carrying on past unreadable files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from audioclf import load_classifier
from audioclf.audio import load_audio
from audioclf.cli import app
from audioclf.config import DataSpec, ModelOptions
from audioclf.data import load_clips
from audioclf.testing import class_clip, make_folder_dataset, tiny_train_options, write_clip
from audioclf.train import train

runner = CliRunner()
LABELS = ["high", "low", "noise"]


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("tones"), clips_per_label=10, seconds=1.0, sampling_rate=8000)


@pytest.fixture(scope="module")
def model_dir(tones, tmp_path_factory) -> Path:
    """A tiny wav2vec2 trained for one epoch only: it has learned something but still makes mistakes, so the
    scores below are not all trivially 1."""
    output = tmp_path_factory.mktemp("trained") / "model"
    train(DataSpec(data=str(tones)), ModelOptions(model_config="tiny-wav2vec2"), tiny_train_options(epochs=1), output,
          progress=False, echo=lambda line: None)
    return output


def _truth_and_predictions(model_dir: Path, paths: list[str]) -> tuple[list[str], list[str]]:
    classifier = load_classifier(model_dir)
    scores = classifier.score_clips([load_audio(p, classifier.sampling_rate) for p in paths])
    return [Path(p).parent.name for p in paths], [classifier.labels[s.probabilities.argmax()] for s in scores]


def _evaluate(model_dir: Path, tones: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["evaluate", str(model_dir), "--data", str(tones), "--json", "-q", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # exactly one JSON object


# --- evaluate -----------------------------------------------------------------------------------


def test_evaluate_json_matches_sklearn_on_the_models_predictions(model_dir, tones):
    report = _evaluate(model_dir, tones, "--split", "all")

    paths = sorted(str(p) for p in tones.rglob("*.wav"))
    truth, predicted = _truth_and_predictions(model_dir, paths)
    assert 0 < accuracy_score(truth, predicted) < 1  # the comparison below is not trivial
    assert report["n"] == len(paths) == 30
    assert report["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    assert report["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
    assert report["labels"] == LABELS
    assert sum(map(sum, report["confusion"])) == 30
    wrong = sorted(p for p, t, q in zip(paths, truth, predicted) if t != q)
    assert sorted(row["path"] for row in report["misclassified"]) == wrong


def test_evaluate_defaults_to_the_training_runs_test_clips(model_dir, tones):
    report = _evaluate(model_dir, tones)

    # the same options the model was trained with make the same split again
    test = load_clips(DataSpec(data=str(tones)), progress=False).splits["test"]
    paths = [row["path"] for row in test.with_format(None)["audio"]]
    truth, predicted = _truth_and_predictions(model_dir, paths)
    assert report["n"] == len(paths) == 6
    assert report["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    assert report["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)


def test_evaluate_report_dir_writes_the_four_files(model_dir, tones, tmp_path):
    report_dir = tmp_path / "report"

    report = _evaluate(model_dir, tones, "--split", "all", "--report-dir", str(report_dir))

    assert sorted(p.name for p in report_dir.iterdir()) == ["confusion.png", "metrics.json", "misclassified.csv",
                                                            "predictions.jsonl"]
    clips = [json.loads(line) for line in (report_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(clips) == report["n"]
    assert json.loads((report_dir / "metrics.json").read_text()) == report
    image = imread(report_dir / "confusion.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with (report_dir / "misclassified.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["label"], r["predicted"]) for r in rows] == [
        (m["path"], m["label"], m["predicted"]) for m in report["misclassified"]
    ]
    assert len(rows) > 0
    assert all(r["top1_label"] == r["predicted"] for r in rows)


# --- predict ------------------------------------------------------------------------------------


@pytest.fixture
def clip_dir(tmp_path, monkeypatch) -> Path:
    """A working directory with clips/ of one clip per label at 16 kHz, a file that is not audio and an empty one."""
    monkeypatch.chdir(tmp_path)
    for i, label in enumerate(LABELS):
        write_clip(tmp_path / "clips" / f"{label}.wav", class_clip(label, 0.8, 16000, seed=700 + i), 16000)
    (tmp_path / "clips" / "broken.wav").write_bytes(b"RIFF but not really a wave file")
    (tmp_path / "clips" / "empty.wav").write_bytes(b"")
    return tmp_path


def _predict(model_dir: Path, *args: str):
    return runner.invoke(app, ["predict", str(model_dir), *args])


def test_predict_json_gives_one_line_per_file_as_given(model_dir, clip_dir):
    given = ["clips/high.wav", "./clips/low.wav", str(clip_dir / "clips" / "noise.wav")]

    result = _predict(model_dir, *given, "--json", "--top-k", str(len(LABELS)))

    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in rows] == given
    classifier = load_classifier(model_dir)
    for row in rows:
        scores = [p["score"] for p in row["predictions"]]
        assert sorted(p["label"] for p in row["predictions"]) == LABELS
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert scores == sorted(scores, reverse=True)
        expected = classifier.classify(row["path"], top_k=None)
        assert [p["label"] for p in row["predictions"]] == [p["label"] for p in expected]
        np.testing.assert_allclose(scores, [p["score"] for p in expected], atol=1e-5)


def test_predict_top_k_limits_the_labels(model_dir, clip_dir):
    result = _predict(model_dir, "clips/low.wav", "--json", "--top-k", "1")

    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(row["predictions"]) == 1


def test_predict_reports_unreadable_files_and_classifies_the_rest(model_dir, clip_dir):
    given = ["clips/broken.wav", "clips/low.wav", "clips/missing.wav", "clips/empty.wav", "clips/noise.wav"]

    result = _predict(model_dir, *given, "--json", "--top-k", "3")

    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in rows] == given
    for row in (rows[0], rows[2], rows[3]):
        assert set(row) == {"path", "error"} and row["error"]
    assert "not found" in rows[2]["error"] and "empty" in rows[3]["error"]
    for row in (rows[1], rows[4]):
        assert set(row) == {"path", "predictions"} and len(row["predictions"]) == 3


def test_predict_fails_only_when_nothing_could_be_classified(model_dir, clip_dir):
    result = _predict(model_dir, "clips/broken.wav", "clips/missing.wav", "--json")

    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [set(row) for row in rows] == [{"path", "error"}] * 2


def test_predict_text_output_puts_errors_on_stderr(model_dir, clip_dir):
    result = _predict(model_dir, "clips/missing.wav", "clips/high.wav", "--top-k", "2")

    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "error: clips/missing.wav: file not found"
    (line,) = result.stdout.splitlines()
    assert line.startswith("clips/high.wav: ") and len(line.split(", ")) == 2


@pytest.mark.parametrize("command", [["predict"], ["evaluate"], ["export", "onnx"]])
def test_a_mistyped_model_folder_is_named_as_typed_at_once(command, model_dir, clip_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(model_dir.parent)  # holds `model`; `modl` is a typo of it, not a Hub id
    monkeypatch.setattr("audioclf.hub.unreachable_reason", lambda: pytest.fail("a local typo went to the Hub"))
    rest = {"predict": [str(clip_dir / "clips" / "low.wav")], "evaluate": ["--data", str(clip_dir / "clips")],
            "export": [str(tmp_path / "onnx")]}[command[0]]

    result = runner.invoke(app, [*command, "modl", *rest])

    assert result.exit_code == 1
    assert result.stderr == "error: MODEL_DIR 'modl': no such folder; did you mean 'model'?\n"
