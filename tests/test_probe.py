"""probe.py: the frozen encoder's per-layer means are cached once, the one head fit (a logistic regression chosen on
the evaluation clips) is written into either kind of head, and the saved directory's own forward pass gives exactly
the regression's logits: probe mode's weighted-layer-sum head, and the plain head the default preset fine-tunes from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from audioclf.config import DataSpec, ModelOptions
from audioclf.data import clip_samples, load_clips
from audioclf.features import BatchFeaturizer, ClipTransform
from audioclf.distributed import Processes
from audioclf.model import ModelBundle, build_model, fit_whisper_window
from audioclf.probe import fit_head, head_logits, layer_means, split_layer_means
from audioclf.testing import class_clip, make_folder_dataset, tiny_train_options
from audioclf.train import train


LABELS = ["high", "low", "noise"]  # make_folder_dataset's labels, in the sorted order training gives them ids
WAV2VEC2_AND_WHISPER = ["tiny-wav2vec2", "tiny-wav2vec2-layernorm", "tiny-hubert", "tiny-wavlm", "tiny-data2vec-audio",
                        "tiny-whisper"]


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("tones"), clips_per_label=8, seconds=1.0, sampling_rate=8000)


def _plain_model(name: str) -> tuple[ModelBundle, BatchFeaturizer]:
    """A tiny random model with the plain head (no weighted layer sum), Whisper cut to a 1 s window."""
    bundle = build_model(name, LABELS, seed=0)
    if bundle.model_type == "whisper":
        fit_whisper_window(bundle, 1)
    return bundle, BatchFeaturizer(bundle.feature_extractor, bundle.model_type, bundle.uses_attention_mask)


@pytest.mark.parametrize("name", WAV2VEC2_AND_WHISPER)
def test_last_layer_mean_is_what_the_projector_is_given(name):
    import datasets

    bundle, featurizer = _plain_model(name)
    clips = [class_clip(label, 0.5 + 0.1 * i, 16_000, seed=i) for i, label in enumerate(LABELS * 2)]
    given: list[torch.Tensor] = []
    hook = bundle.model.projector.register_forward_hook(lambda module, inputs, output: given.append(inputs[0].mean(dim=1)))
    try:
        with torch.no_grad():
            for clip in clips:  # the model's own forward pass, one clip at a time
                bundle.model.eval()(**featurizer([clip]))
    finally:
        hook.remove()

    means = layer_means(bundle, featurizer, datasets.Dataset.from_dict({"samples": clips}).with_format("numpy"),
                        progress=False)
    np.testing.assert_allclose(means[:, -1], torch.cat(given).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-whisper"])
def test_fitted_plain_head_is_the_regression_in_the_saved_model(name, tones, tmp_path, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    bundle, featurizer = _plain_model(name)
    splits = load_clips(DataSpec(data=str(tones)), progress=False).splits  # train and test, stratified
    processes = Processes()
    features = {split: split_layer_means(bundle, featurizer, splits[split], 1.0, "start", 0, processes, progress=False)[0]
                for split in ("train", "test")}
    labels = {split: np.asarray(splits[split]["label"]) for split in ("train", "test")}
    untouched_rows = bundle.model.projector.weight[len(LABELS):].detach().clone()

    fit = fit_head(bundle.model, features["train"], labels["train"], features["test"], labels["test"], seed=0,
                   refit_with_eval=False)
    bundle.save(tmp_path / "model")

    n_layers = features["train"].shape[1]
    assert (fit["mixture"], fit["candidates"]) == (f"layer {n_layers - 1}", 3)  # the last layer; three strengths
    model = AutoModelForAudioClassification.from_pretrained(tmp_path / "model").eval()
    assert not model.config.use_weighted_layer_sum
    samples = splits["train"].with_transform(ClipTransform(clip_samples, bundle.sampling_rate, 1.0, "start"))
    with torch.no_grad():
        from_model = np.concatenate([model(**featurizer([samples[i]["samples"]])).logits.numpy()
                                     for i in range(len(samples))])
    pooled = features["train"][:, -1].astype(np.float64)  # the reference: scikit-learn on the standardized means
    mean, scale = pooled.mean(axis=0), pooled.std(axis=0)
    reference = LogisticRegression(C=fit["strength"], max_iter=2000, random_state=0).fit((pooled - mean) / scale,
                                                                                          labels["train"])
    np.testing.assert_allclose(from_model, reference.decision_function((pooled - mean) / scale), rtol=0, atol=1e-4)
    assert fit["train_accuracy"] == pytest.approx(float(np.mean(from_model.argmax(1) == labels["train"])))
    assert fit["train_accuracy"] > 0.5  # three clearly different sounds, chance is 1/3
    torch.testing.assert_close(model.projector.weight[len(LABELS):], untouched_rows)  # left for fine-tuning to use
    # the evaluation clips' answers, clip by clip, are the saved model's (the fit was not refitted with them)
    tests = splits["test"].with_transform(ClipTransform(clip_samples, bundle.sampling_rate, 1.0, "start"))
    with torch.no_grad():
        on_tests = np.concatenate([model(**featurizer([tests[i]["samples"]])).logits.numpy()
                                   for i in range(len(tests))])
    assert fit["eval_right"] == (on_tests.argmax(1) == labels["test"]).tolist()
    assert np.mean(fit["eval_right"]) == pytest.approx(fit["eval_accuracy"])


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-whisper"])
def test_probe_head_equals_the_saved_models_logits(name, tones, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    lines: list[str] = []
    output = tmp_path / "model"
    result = train(DataSpec(data=str(tones)), ModelOptions(model_config=name), tiny_train_options(mode="probe"),
                   output, progress=False, echo=lines.append)

    config = json.loads((output / "config.json").read_text())
    assert config["use_weighted_layer_sum"] is True
    assert result.metrics["test"]["accuracy"] > 0.5  # three clearly different sounds, chance is 1/3

    model = AutoModelForAudioClassification.from_pretrained(output).eval()
    probe, n_layers = result.metrics["probe"], len(model.layer_weights)
    assert probe["candidates"] == n_layers + 1 + 2  # each layer alone and all equally, then two more strengths
    assert probe["mixture"] in ["all layers equally", "embeddings"] + [f"layer {i}" for i in range(1, n_layers)]
    assert result.metrics["validation"] == {"accuracy": probe["eval_accuracy"], "loss": probe["eval_loss"]}
    bundle = ModelBundle(model, AutoFeatureExtractor.from_pretrained(output))
    featurizer = BatchFeaturizer(bundle.feature_extractor, bundle.model_type, bundle.uses_attention_mask)
    clips = load_clips(DataSpec(data=str(tones)), progress=False).splits["train"]
    window = result.metrics["window_seconds"]
    samples = clips.with_transform(ClipTransform(clip_samples, bundle.sampling_rate, window, "start"))
    features = torch.from_numpy(layer_means(bundle, featurizer, samples, progress=False))
    with torch.no_grad():
        from_head = head_logits(model, features).numpy()
        from_model = np.concatenate([model(**featurizer([samples[i]["samples"]])).logits.numpy() for i in range(len(samples))])
    np.testing.assert_allclose(from_head, from_model, atol=1e-4)


def test_second_probe_run_reads_the_feature_cache(tones, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    runs = []
    for attempt in range(2):
        lines: list[str] = []
        result = train(DataSpec(data=str(tones)), ModelOptions(model_config="tiny-whisper"),
                       tiny_train_options(mode="probe"), tmp_path / f"m{attempt}", progress=False, echo=lines.append)
        runs.append((lines, result.metrics))
    assert not any("from the cache" in line for line in runs[0][0])
    assert sum("from the cache" in line for line in runs[1][0]) == 2  # train and validation (test: the saved model)
    assert runs[0][1]["test"] == runs[1][1]["test"]
    assert list((tmp_path / "home" / "cache" / "features").glob("*.npy"))


def test_a_head_the_fit_cannot_be_written_into_is_refused_by_the_flag_that_asked():
    from types import SimpleNamespace

    from audioclf.errors import ConfigError
    from audioclf.probe import check_head_fits

    narrow = build_model("tiny-wav2vec2", [f"label {i}" for i in range(40)]).model  # a projector of 32 outputs
    with pytest.raises(ConfigError, match="--mode probe: 40 labels need a classifier_proj_size of at least 40, not 32"):
        check_head_fits(narrow, "--mode probe")
    spectrogram = SimpleNamespace(config=SimpleNamespace(model_type="audio-spectrogram-transformer"))  # no projector
    with pytest.raises(ConfigError, match="--probe-init: the audio-spectrogram-transformer .* or --no-probe-init"):
        check_head_fits(spectrogram, "--probe-init")
