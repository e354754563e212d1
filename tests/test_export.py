"""export.py and `audioclf export onnx`: the ONNX graph gives torch's logits (dynamic batch, and length where the
model has no fixed window), the numpy features equal transformers' extractors, int8 quantizes only the matrix
products and reports its agreement, a failed check leaves nothing behind, and `predict` on an exported directory
runs without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor
from typer.testing import CliRunner

from audioclf import export
from audioclf.cli import app
from audioclf.errors import ModelError, OutputExistsError
from audioclf.export import EXPORT_RECORD_FILE, export_onnx
from audioclf.features import NumpyFeatures, mel_filters
from audioclf.infer import TorchBackend, load_classifier
from audioclf.model import build_model, fit_whisper_window
from audioclf.testing import class_clip, write_clip

runner = CliRunner()
LABELS = ["low", "high", "noise"]
RATE = 16_000
CLIP_SECONDS = [0.5, 0.8, 0.8, 1.0, 1.3, 0.8]  # mixed, some equal so that the unmasked model batches them


def save_model(name: str, directory: Path) -> Path:
    """A tiny random model (Whisper cut to a 1 s window) whose head is scaled up so that scores differ clearly."""
    bundle = build_model(name, LABELS, seed=1)
    fit_whisper_window(bundle, 1)
    with torch.no_grad():
        bundle.model.classifier.weight.mul_(50)
    bundle.save(directory)
    return directory


@pytest.fixture(scope="module", params=["tiny-wav2vec2", "tiny-whisper"])
def exported(request, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp(request.param)
    model_dir = save_model(request.param, root / "model")
    export_onnx(model_dir, root / "onnx")
    return model_dir, root / "onnx"


def _clips() -> list[np.ndarray]:
    return [class_clip(LABELS[i % 3], s, RATE, seed=300 + i) for i, s in enumerate(CLIP_SECONDS)]


def _probabilities(classifier, clips) -> np.ndarray:
    return np.stack([scores.probabilities for scores in classifier.score_clips(clips)])


def test_onnx_backend_gives_torchs_scores(exported):
    model_dir, onnx_dir = exported
    ours = load_classifier(onnx_dir, batch_size=4)
    reference = load_classifier(model_dir, batch_size=4)

    assert ours.backend.kind == "onnx" and reference.backend.kind == "torch"
    assert ours.labels == reference.labels == LABELS
    assert ours.backend.window_seconds == reference.backend.window_seconds
    assert ours.plan == reference.plan
    for batch in (_clips()[:1], _clips()[1:3], _clips()[4:] if ours.backend.fixed_window else _clips()[1:2]):
        expected = reference.backend.logits(batch)  # features by transformers, graph by torch
        assert np.ptp(expected) > 0.1  # logits that differ, so the comparison below means something
        np.testing.assert_allclose(ours.backend.logits(batch), expected, atol=1e-4)  # numpy features, ONNX graph
    expected = _probabilities(reference, _clips())
    got = _probabilities(ours, _clips())
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_exported_directory_and_its_record(exported):
    _, onnx_dir = exported
    record = json.loads((onnx_dir / EXPORT_RECORD_FILE).read_text())
    config = json.loads((onnx_dir / "config.json").read_text())
    graph = onnx.load(str(onnx_dir / "model.onnx")).graph

    assert {p.name for p in onnx_dir.iterdir()} == {"model.onnx", "config.json", "preprocessor_config.json",
                                                    EXPORT_RECORD_FILE, "README.md"}  # no training record to copy
    assert sorted(p.name for p in onnx_dir.parent.iterdir()) == ["model", "onnx"]  # no staging folder left beside it
    assert config["id2label"] == {"0": "low", "1": "high", "2": "noise"}
    assert record["quantize"] is None and record["max_abs_logit_difference"] <= 1e-4 and record["parity_clips"] >= 4
    (shape,) = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    if record["model_type"] == "whisper":  # dynamic batch, the window's fixed frames
        assert [i.name for i in graph.input] == ["input_features"] and shape == ["batch", 80, 100]
    else:
        assert [i.name for i in graph.input] == ["input_values"] and shape == ["batch", "samples"]


def test_numpy_features_equal_transformers_extractors():
    clips = _clips()
    whisper = WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    ours = NumpyFeatures(whisper.to_dict(), "whisper", uses_attention_mask=False)
    np.testing.assert_allclose(mel_filters(400, 80, RATE), whisper.mel_filters, atol=1e-12)
    expected = whisper(clips, sampling_rate=RATE, return_tensors="np")["input_features"]
    # transformers computes in float32 with torch, we in float64: they differ in the last digits of faint bins
    np.testing.assert_allclose(ours(clips)["input_features"], expected, atol=1e-4)

    w2v = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    ours = NumpyFeatures(w2v.to_dict(), "wav2vec2", uses_attention_mask=True)
    expected = w2v(clips, sampling_rate=RATE, padding=True, return_attention_mask=True, return_tensors="np")
    got = ours(clips)
    np.testing.assert_array_equal(got["input_values"], expected["input_values"])
    np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])


def test_int8_export_quantizes_matrix_products_and_reports_agreement(tmp_path):
    model_dir = save_model("tiny-wav2vec2-layernorm", tmp_path / "model")
    data = tmp_path / "data"
    for label in LABELS:
        for i in range(3):
            write_clip(data / label / f"{label}{i}.wav", class_clip(label, 0.6 + 0.2 * i, 8000, seed=i), 8000)

    result = runner.invoke(app, ["export", "onnx", str(model_dir), str(tmp_path / "int8"), "--quantize", "int8",
                                 "--data", str(data), "-q"])

    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "int8" / EXPORT_RECORD_FILE).read_text())
    assert record["quantize"] == "int8" and record["quantized_ops"] == ["MatMul", "Gemm"]
    assert record["agreement_clips"] == 9 and record["agreement_data"] == str(data)  # untrained: all of the folder
    assert 0 <= record["agreement"] <= 1
    assert f"int8 top-1 agreement with fp32: {record['agreement']:.1%} on 9 clips" in result.stdout
    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops and "Conv" in ops and "ConvInteger" not in ops  # the front end stays float
    quantized = _probabilities(load_classifier(tmp_path / "int8"), _clips())
    reference = _probabilities(load_classifier(model_dir), _clips())
    np.testing.assert_allclose(quantized.sum(axis=1), 1, atol=1e-5)
    assert np.abs(quantized - reference).max() < 0.2


def test_int8_leaves_the_head_and_layers_with_outlier_inputs_in_float(tmp_path):
    bundle = build_model("tiny-whisper", list(LABELS), seed=0)
    fit_whisper_window(bundle, 1)
    encoder = bundle.model.encoder
    fc1 = encoder.layers[-1].fc1
    with torch.no_grad():  # the first frame stands out, and one hidden unit of the last feed-forward block fires on it
        encoder.embed_positions.weight[0, 0] = 100.0
        fc1.weight[0] = 0.0
        fc1.weight[0, 0] = 20.0
        fc1.bias[0] = -60.0
    bundle.save(tmp_path / "model")
    backend = TorchBackend(bundle)
    export._export_graph(bundle, tmp_path / "fp32.onnx")

    kept = export.float_nodes(backend, tmp_path / "fp32.onnx")

    assert kept == ["/model/encoder/layers.1/fc2/MatMul", "/model/projector/MatMul", "/model/classifier/Gemm"]
    export._quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", kept)
    nodes = onnx.load(str(tmp_path / "int8.onnx")).graph.node
    left = [n.name for n in nodes if n.op_type in ("MatMul", "Gemm") and "/self_attn/MatMul" not in n.name]
    assert sorted(left) == sorted(kept[:2] + ["/model/classifier/Gemm_MatMul"])  # the quantizer's name for the Gemm
    assert sum(n.op_type == "MatMulInteger" for n in nodes) == 2 * 6 - 1  # the rest of both layers' projections
    with torch.no_grad():  # without the outlier nothing in the body stands out
        fc1.weight[0, 0] = 0.0
    assert export.float_nodes(backend, tmp_path / "fp32.onnx") == kept[1:]


def test_onnx_scope_names_modules_as_the_exporter_does():
    assert export.onnx_scope("encoder.layers.3.fc2") == "/model/encoder/layers.3/fc2"
    assert export.onnx_scope("wav2vec2.encoder.layers.11.feed_forward.output_dense") == \
        "/model/wav2vec2/encoder/layers.11/feed_forward/output_dense"
    assert export.onnx_scope("projector") == "/model/projector"


def test_failed_parity_check_leaves_nothing_behind(tmp_path, monkeypatch):
    model_dir = save_model("tiny-wav2vec2", tmp_path / "model")
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # no graph can pass

    with pytest.raises(ModelError, match="differ from torch's by up to .* nothing was written"):
        export_onnx(model_dir, tmp_path / "out")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_existing_output_needs_overwrite(exported, tmp_path):
    model_dir, _ = exported
    (tmp_path / "out").mkdir()

    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_onnx(model_dir, tmp_path / "out")
    result = runner.invoke(app, ["export", "onnx", str(model_dir), str(tmp_path / "out"), "--quantize", "int4"])
    assert result.exit_code == 1 and "--quantize 'int4': must be one of int8" in result.stderr
    result = runner.invoke(app, ["export", "onnx", str(model_dir), str(tmp_path / "new"), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "--data: the held-out clips are for measuring --quantize int8" in result.stderr
    assert not (tmp_path / "new").exists()


def test_predict_on_an_exported_directory_never_imports_torch(exported, tmp_path):
    _, onnx_dir = exported
    paths = [str(write_clip(tmp_path / f"{label}.wav", class_clip(label, 0.9, 8000, seed=4), 8000)) for label in LABELS]
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from audioclf.cli import app\n"
        f"result = CliRunner().invoke(app, ['predict', {str(onnx_dir)!r}, *{paths!r}, '--json', '--top-k', '3'])\n"
        "assert result.exit_code == 0, result.output\n"
        "sys.stdout.write(result.stdout)\n"
        "print('torch imported:', 'torch' in sys.modules, 'transformers imported:', 'transformers' in sys.modules)\n"
    )

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)

    assert run.returncode == 0, run.stderr
    *lines, last = run.stdout.splitlines()
    assert last == "torch imported: False transformers imported: False"
    rows = [json.loads(line) for line in lines]
    expected = load_classifier(onnx_dir, backend="onnx")
    assert [row["path"] for row in rows] == paths
    for row in rows:
        reference = expected.classify(row["path"], top_k=3)
        assert [p["label"] for p in row["predictions"]] == [p["label"] for p in reference]
        np.testing.assert_allclose([p["score"] for p in row["predictions"]], [p["score"] for p in reference], atol=1e-6)
