"""model.py: the named tiny configs build and run, labels are wired in, Whisper's window is fitted and survives a
save/reload through transformers' own Auto classes, and bad configs or unreachable models fail with domain errors."""

from __future__ import annotations

import json
import socket

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from audioclf.errors import ConfigError, ModelError
from audioclf.features import BatchFeaturizer
from audioclf.model import NAMED_CONFIGS, build_model, fit_whisper_window, load_model, resolve_config
from audioclf.testing import class_clip

LABELS = ["low", "high", "noise"]
SAMPLING_RATE = 16000
TINY_CONFIGS = sorted(name for name in NAMED_CONFIGS if name.startswith("tiny-"))


def _logits(bundle, clips: list[np.ndarray]) -> torch.Tensor:
    inputs = BatchFeaturizer(bundle.feature_extractor, bundle.model_type, bundle.uses_attention_mask)(clips)
    with torch.inference_mode():
        return bundle.model.eval()(**inputs).logits


@pytest.mark.parametrize("name", TINY_CONFIGS)
def test_every_tiny_config_classifies_one_second(name):
    bundle = build_model(name, LABELS, seed=0)
    clip = class_clip("low", 1.0, SAMPLING_RATE, seed=0)

    logits = _logits(bundle, [clip])

    assert bundle.sampling_rate == SAMPLING_RATE
    assert logits.shape == (1, len(LABELS))
    assert torch.isfinite(logits).all()


def test_tiny_configs_are_tiny_and_cover_both_families():
    assert {"tiny-wav2vec2", "tiny-whisper"} <= set(TINY_CONFIGS)
    for name in TINY_CONFIGS:
        parameters = sum(p.numel() for p in build_model(name, LABELS).model.parameters())
        assert parameters < 200_000, name


def test_build_model_sets_label_maps():
    bundle = build_model("tiny-wav2vec2", LABELS)

    config = bundle.model.config
    assert config.num_labels == 3
    assert config.id2label == {0: "low", 1: "high", 2: "noise"}
    assert config.label2id == {"low": 0, "high": 1, "noise": 2}
    assert bundle.model.classifier.out_features == 3


def test_build_model_is_seeded():
    first = build_model("tiny-wav2vec2", LABELS, seed=3).model.state_dict()
    again = build_model("tiny-wav2vec2", LABELS, seed=3).model.state_dict()
    other = build_model("tiny-wav2vec2", LABELS, seed=4).model.state_dict()

    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["classifier.weight"], other["classifier.weight"])


def test_fit_whisper_window_takes_exactly_two_seconds_and_reloads(tmp_path):
    bundle = build_model("tiny-whisper", LABELS, seed=0)
    assert bundle.window_seconds == 30  # transformers' default: 1500 positions

    fit_whisper_window(bundle, 2)

    assert bundle.window_seconds == 2
    assert bundle.model.config.max_source_positions == 100
    assert bundle.feature_extractor.chunk_length == 2
    clips = [class_clip("high", 1.0, SAMPLING_RATE, seed=1), class_clip("low", 3.0, SAMPLING_RATE, seed=2)]
    features = bundle.feature_extractor(clips, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_features"]
    assert features.shape == (2, 80, 200)  # short clips padded, long ones cut, to 2 s of 100 frames/s
    with pytest.raises(ValueError, match="200"):
        bundle.model(input_features=torch.zeros(1, 80, 3000))
    expected = _logits(bundle, clips)

    bundle.save(tmp_path / "whisper")
    model = AutoModelForAudioClassification.from_pretrained(tmp_path / "whisper").eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(tmp_path / "whisper")

    assert model.config.max_source_positions == 100
    assert model.encoder.embed_positions.weight.shape[0] == 100
    assert feature_extractor.chunk_length == 2
    assert feature_extractor.nb_max_frames == 200
    assert feature_extractor.n_samples == 2 * SAMPLING_RATE
    reloaded = feature_extractor(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"]
    with torch.inference_mode():
        torch.testing.assert_close(model(input_features=reloaded).logits, expected, atol=1e-5, rtol=0)


def test_fit_whisper_window_rejects_impossible_windows():
    bundle = build_model("tiny-whisper", LABELS)
    with pytest.raises(ConfigError, match="at most 30 s"):
        fit_whisper_window(bundle, 31)
    with pytest.raises(ConfigError, match="whole seconds"):
        fit_whisper_window(bundle, 1.5)
    assert bundle.model.config.max_source_positions == 1500  # left as it was


def test_fit_whisper_window_leaves_other_models_alone():
    bundle = build_model("tiny-wav2vec2", LABELS)
    extractor = bundle.feature_extractor

    fit_whisper_window(bundle, 2)

    assert bundle.feature_extractor is extractor
    assert bundle.window_seconds is None


def test_unknown_config_name_lists_the_known_names():
    with pytest.raises(ConfigError) as error:
        resolve_config("tiny-nonsense")

    message = str(error.value)
    assert "tiny-nonsense" in message
    for name in NAMED_CONFIGS:
        assert name in message


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_without_model_type_is_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_text(json.dumps({"hidden_size": 32}))  # JSON is valid YAML too

    with pytest.raises(ConfigError, match="model_type") as error:
        resolve_config(str(path))
    assert str(path) in str(error.value)


def test_config_file_builds_the_model_it_describes(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("model_type: wav2vec2\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in NAMED_CONFIGS["tiny-wav2vec2"].items() if k != "model_type"))

    config = resolve_config(str(path))

    assert config.model_type == "wav2vec2"
    assert config.hidden_size == 32 and config.num_hidden_layers == 2


def test_invalid_config_file_is_a_config_error(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("{not json")

    with pytest.raises(ConfigError, match="not valid"):
        resolve_config(str(path))


def test_load_model_on_a_missing_directory(tmp_path):
    missing = tmp_path / "no-model-here"

    with pytest.raises(ModelError, match="no such folder"):
        load_model(str(missing), LABELS)


@pytest.mark.parametrize("typed", ["demo-modl", "./demo-modl", "models/demo-modl", "a/b/c"])
def test_a_reference_that_can_only_be_a_missing_folder_is_named_at_once(typed, tmp_path, monkeypatch):
    # a bare name is a folder unless the Hub cache has it (a Hub id is owner/name); `models/` exists here
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-model").mkdir()
    (tmp_path / "models" / "demo-model").mkdir(parents=True)
    monkeypatch.setattr("audioclf.hub.unreachable_reason", lambda: pytest.fail("no Hub request for a local path"))

    with pytest.raises(ModelError) as error:
        load_model(typed, LABELS, argument="MODEL_DIR")

    near = {"demo-modl": "demo-model", "./demo-modl": "demo-model", "models/demo-modl": "models/demo-model"}
    expected = f"MODEL_DIR {typed!r}: no such folder" + (f"; did you mean {near[typed]!r}?" if typed in near else "")
    assert str(error.value) == expected


def test_a_bare_name_in_the_hub_cache_is_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: str(tmp_path / filename))
    from audioclf.model import check_model_reference

    assert check_model_reference("superb-model") is False


def test_a_hub_id_while_the_hub_is_unreachable_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("audioclf.hub.unreachable_reason", lambda: "ConnectError: no route")
    monkeypatch.setattr("transformers.AutoFeatureExtractor.from_pretrained",
                        lambda *a, **k: pytest.fail("no download after the Hub was found unreachable"))

    with pytest.raises(ModelError) as error:
        load_model("owner/audio-model", LABELS)

    assert str(error.value) == ("--model 'owner/audio-model': not a folder here, and as a Hub id it cannot be "
                                "downloaded: the Hub cannot be reached (ConnectError: no route) and the local cache "
                                "does not hold it")


def test_load_model_on_an_unknown_hub_id_offline_fails_with_no_request(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; set the constant too so nothing touches the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail(f"a network lookup offline: {a[:2]}"))

    with pytest.raises(ModelError, match="audioclf-tests/no-such-model") as error:
        load_model("audioclf-tests/no-such-model", LABELS)
    assert "offline" in str(error.value) and "not in the local cache" in str(error.value)


def test_load_model_gives_a_saved_model_new_labels(tmp_path):
    build_model("tiny-wav2vec2", ["cat", "dog"]).save(tmp_path / "model")

    kept = load_model(str(tmp_path / "model"))
    relabelled = load_model(str(tmp_path / "model"), LABELS)

    assert kept.model.config.id2label == {0: "cat", 1: "dog"}
    assert relabelled.model.config.id2label == {0: "low", 1: "high", 2: "noise"}
    assert relabelled.model.classifier.out_features == 3


def test_a_damaged_checkpoint_is_named_in_one_line_before_transformers_reads_it(tmp_path):
    model = tmp_path / "model"
    build_model("tiny-wav2vec2", ["cat", "dog"]).save(model)
    weights = model / "model.safetensors"
    whole = weights.read_bytes()
    config = json.loads((model / "config.json").read_text())

    weights.write_bytes(whole[: len(whole) // 2])
    for labels in (None, LABELS):  # evaluate/predict/serve/export, and train --model DIR
        with pytest.raises(ModelError) as error:
            load_model(str(model), labels)
        assert str(error.value) == (f"{weights}: truncated or corrupt weights (Error while deserializing header: "
                                    f"incomplete metadata, file not fully covered); copy the model directory again, "
                                    f"or train it again")

    weights.write_bytes(whole)
    (model / "config.json").write_text(json.dumps({**config, "id2label": {"0": "a", "1": "b", "2": "c"},
                                                   "label2id": {"a": 0, "b": 1, "c": 2}}))
    with pytest.raises(ModelError) as error:
        load_model(str(model))
    assert str(error.value) == (f"{model / 'config.json'}: id2label names 3 labels but the classifier head in "
                                f"model.safetensors (classifier.weight) has 2 outputs; the label maps and the weights "
                                f"must agree: restore config.json, or train the model again")
    assert load_model(str(model), LABELS).model.classifier.out_features == 3  # new labels get a new head, as before

    (model / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config.json: not valid JSON \(Expecting property name"):
        load_model(str(model))
