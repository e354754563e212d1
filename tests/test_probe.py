"""Probe mode: the frozen encoder's per-layer means are cached once, only the weighted-layer-sum head is
trained, and the saved directory's own forward pass gives exactly the head's logits on the cached features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from audioclf.config import DataSpec, ModelOptions
from audioclf.data import clip_samples, load_clips
from audioclf.features import BatchFeaturizer, ClipTransform
from audioclf.model import ModelBundle
from audioclf.probe import head_logits, layer_means
from audioclf.testing import make_folder_dataset, tiny_train_options
from audioclf.train import train


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("tones"), clips_per_label=8, seconds=1.0, sampling_rate=8000)


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
