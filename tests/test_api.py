"""api.py and the classifier's Python methods: the README's example runs as it is, `import audioclf` stays free of
torch, `classify` is the pipeline's answer (arrays at other rates resampled as files are), `classify_batch` is
`classify` for many, `embed` is the encoder's pooled output as transformers computes it, over the same windows the
scores use, and `progress=False` prints nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import audioclf
from audioclf.audio import resample
from audioclf.errors import AudioLoadError, ConfigError, ModelError
from audioclf.model import build_model, fit_whisper_window
from audioclf.testing import class_clip, make_folder_dataset, save_tone_model, write_clip

README = Path(__file__).resolve().parents[1] / "README.md"
RATE = 16_000  # Hz, the tiny models' rate


def readme_example() -> str:
    """The Python block of the README's "Python API" section."""
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def tone_model(tmp_path_factory) -> Path:
    return save_tone_model(tmp_path_factory.mktemp("api") / "tones", name="tiny-wav2vec2")


@pytest.fixture(scope="module")
def whisper_model(tmp_path_factory) -> Path:
    return save_tone_model(tmp_path_factory.mktemp("api") / "tones-whisper", name="tiny-whisper")


def test_the_readme_example_runs_as_it_is(tmp_path, monkeypatch, capfd):
    """In a folder with what the example names: label folders `clips`, a checkpoint `whisper-tiny.en` (a tiny random
    Whisper here, which a folder of that name makes win over the backbone the README's name installs) and `call.wav`."""
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(Path("clips"), clips_per_label=6, seconds=1.0, sampling_rate=8000)
    bundle = build_model("tiny-whisper", ["a", "b"], seed=0)
    fit_whisper_window(bundle, 1)
    bundle.save(Path("whisper-tiny.en"))
    write_clip(Path("call.wav"), class_clip("high", 1.0, 8000, seed=99), 8000)
    capfd.readouterr()

    exec(compile(readme_example(), "README.md", "exec"), {})

    printed = capfd.readouterr().out.splitlines()
    assert len(printed) == 2
    predictions = eval(printed[0])  # a list of {"label", "score"}, printed
    assert [p["label"] for p in predictions] == [p["label"] for p in
                                                 audioclf.load_classifier("model").classify("call.wav", top_k=3)]
    assert sorted(p["label"] for p in predictions) == ["high", "low", "noise"]
    # evaluate scored the run's own test clips, the way train did for metrics.json
    assert float(printed[1]) == json.loads(Path("model/metrics.json").read_text())["test"]["accuracy"]


def test_import_audioclf_loads_no_torch():
    code = "import sys, audioclf; audioclf.load_classifier, audioclf.api.train; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_audioclf_train_and_evaluate_are_their_stage_modules_and_calling_them_is_the_api(tmp_path):
    """Both names are modules too: `audioclf.train` stays the module Python makes it (so `audioclf.train.train` and
    patching `audioclf.train.X` work as anywhere), and calling it is api.train, whichever was imported first."""
    import inspect

    import audioclf.evaluate
    import audioclf.train
    from audioclf import api

    assert audioclf.train is sys.modules["audioclf.train"] and audioclf.evaluate is sys.modules["audioclf.evaluate"]
    assert inspect.signature(audioclf.train) == inspect.signature(api.train)
    with pytest.raises(ConfigError, match="exactly one of --model"):  # the call reached train's own checks
        audioclf.train(tmp_path, None, tmp_path / "out")


def test_classify_is_the_pipelines_answer_and_resamples_arrays(tone_model):
    classifier = audioclf.load_classifier(tone_model)
    pipe = transformers.pipeline("audio-classification", model=str(tone_model), device="cpu")
    clip_8k = class_clip("high", 1.2, 8000, seed=3)
    at_model_rate = resample(clip_8k, 8000, RATE)

    ours = classifier.classify(clip_8k, sampling_rate=8000, top_k=None)
    assert ours == classifier.classify(at_model_rate, top_k=None)  # resampled exactly as audio.resample does
    reference = pipe(at_model_rate, top_k=3)
    assert [p["label"] for p in ours] == [p["label"] for p in reference]
    np.testing.assert_allclose([p["score"] for p in ours], [p["score"] for p in reference], atol=1e-4)
    assert len(classifier.classify(clip_8k, sampling_rate=8000)) == 3  # top_k 5, capped at the labels there are
    assert classifier.classify(clip_8k, sampling_rate=8000, top_k=1) == ours[:1]


def test_classify_batch_is_classify_for_each_clip(tone_model, tmp_path):
    classifier = audioclf.load_classifier(tone_model, batch_size=2)
    long_clip = np.concatenate([class_clip("low", 6.0, RATE, seed=1), class_clip("noise", 8.0, RATE, seed=2)])
    path = write_clip(tmp_path / "low.wav", class_clip("low", 0.9, 8000, seed=4), 8000, subtype="FLOAT")
    clips = [class_clip("high", 1.0, RATE, seed=5), str(path), long_clip, path.read_bytes(),
             class_clip("noise", 0.5, RATE, seed=6)]

    batch = classifier.classify_batch(clips, top_k=None)
    assert len(batch) == len(clips)
    for got, clip in zip(batch, clips):
        want = classifier.classify(clip, top_k=None)
        assert [p["label"] for p in got] == [p["label"] for p in want]
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-6)
    assert classifier.plan.window_samples < len(long_clip)  # one of them was scored in windows
    assert classifier.classify_batch([]) == []


def test_classify_refuses_what_it_cannot_take(tone_model, tmp_path):
    classifier = audioclf.load_classifier(tone_model)
    with pytest.raises(AudioLoadError, match="missing.wav"):
        classifier.classify_batch([class_clip("low", 1.0, RATE), str(tmp_path / "missing.wav")])
    with pytest.raises(ConfigError, match="only for arrays"):
        classifier.classify(str(tmp_path / "x.wav"), sampling_rate=8000)
    with pytest.raises(ConfigError, match="1-D array"):
        classifier.classify(np.zeros((RATE, 2), dtype=np.float32))
    with pytest.raises(ConfigError, match="sampling_rate=10"):
        classifier.classify(np.zeros(100, dtype=np.float32), sampling_rate=10)
    with pytest.raises(TypeError):  # top_k and sampling_rate are by name: classify(clip, 3) is not top_k=3
        classifier.classify(np.zeros(RATE, dtype=np.float32), 3)


def _reference_embedding(model_dir: Path, samples: np.ndarray) -> np.ndarray:
    """The mean over time of the encoder's last hidden states, computed with transformers alone."""
    extractor = transformers.AutoFeatureExtractor.from_pretrained(model_dir)
    model = transformers.AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    inputs = extractor(samples, sampling_rate=RATE, return_tensors="pt")
    with torch.inference_mode():
        if model.config.model_type == "whisper":
            hidden = model.encoder(inputs["input_features"]).last_hidden_state
        else:
            hidden = model.wav2vec2(inputs["input_values"]).last_hidden_state
    return hidden.mean(dim=1)[0].numpy()


@pytest.mark.parametrize("which", ["tone_model", "whisper_model"])
def test_embed_is_the_encoders_pooled_output(which, request):
    model_dir = request.getfixturevalue(which)
    classifier = audioclf.load_classifier(model_dir)
    clip = class_clip("high", 0.8, RATE, seed=7)

    embedding = classifier.embed(clip)
    hidden_size = classifier.backend.model.config.hidden_size if which == "tone_model" else 32
    assert embedding.shape == (hidden_size,) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, _reference_embedding(model_dir, clip), atol=1e-5)


def test_embed_of_a_long_recording_is_the_mean_over_the_scoring_windows(whisper_model, tmp_path):
    classifier = audioclf.load_classifier(whisper_model)
    recording = np.concatenate([class_clip("low", 1.5, RATE, seed=8), class_clip("high", 1.2, RATE, seed=9)])
    spans, windows = classifier.plan.cut(recording)
    assert len(spans) == 5  # 1 s windows, 0.5 s apart, the last ending at the end (2.7 s)

    embedding = classifier.embed(recording)
    np.testing.assert_allclose(embedding, np.mean([_reference_embedding(whisper_model, w) for w in windows], axis=0),
                               atol=1e-5)
    path = write_clip(tmp_path / "long.wav", recording, RATE, subtype="FLOAT")
    np.testing.assert_allclose(classifier.embed(str(path)), embedding, atol=1e-6)  # streamed, the same windows
    batch = classifier.embed_batch([recording, class_clip("noise", 0.5, RATE, seed=10), str(path)])
    assert batch.shape == (3, embedding.shape[0])
    np.testing.assert_allclose(batch[0], embedding, atol=1e-6)
    np.testing.assert_allclose(batch[2], embedding, atol=1e-6)


def test_embed_needs_the_torch_backend(tone_model, tmp_path):
    from audioclf.export import export_onnx

    export_onnx(tone_model, tmp_path / "onnx")
    with pytest.raises(ModelError, match="backend='torch'"):
        audioclf.load_classifier(tmp_path / "onnx").embed(class_clip("low", 1.0, RATE))


def test_progress_false_prints_nothing(tmp_path, capfd):
    data = make_folder_dataset(tmp_path / "clips", clips_per_label=6, seconds=0.5, sampling_rate=8000)
    capfd.readouterr()
    result = audioclf.train(data, None, tmp_path / "model", model_config="tiny-wav2vec2", epochs=1, threads=1,
                            progress=False)
    report = audioclf.evaluate(tmp_path / "model", data, progress=False)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert report.accuracy == result.metrics["test"]["accuracy"] and report.n == result.metrics["test"]["n"]


def test_train_takes_options_by_their_field_names_and_checks_them(tmp_path):
    data = make_folder_dataset(tmp_path / "clips", clips_per_label=6, seconds=0.5, sampling_rate=8000)
    with pytest.raises(ConfigError, match="unknown option.*learning_rat"):
        audioclf.train(data, None, tmp_path / "model", model_config="tiny-wav2vec2", learning_rat=1e-3)
    result = audioclf.train(data, None, tmp_path / "model", model_config="tiny-wav2vec2", epochs="1", test_size=0.3,
                            learning_rate=1e-3, progress=False)
    config = json.loads((result.output / "train_config.json").read_text())
    assert (config["train"]["epochs"], config["train"]["learning_rate"], config["data"]["test_size"]) == (1, 1e-3, 0.3)


def test_load_classifier_takes_the_loading_options_of_predict(tone_model):
    classifier = audioclf.load_classifier(tone_model, window_seconds=2.0)
    assert classifier.window_seconds == 2.0 and classifier.hop_seconds == 1.0
