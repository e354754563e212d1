"""card.py: every model directory train and export write carries a model card that huggingface_hub's own parser reads,
with the run's labels, data, recipe and measured test figures; `evaluate --update-card` refreshes it; the directory
still loads in transformers' pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers
from huggingface_hub import ModelCard, metadata_load
from typer.testing import CliRunner

from audioclf import card
from audioclf.cli import app
from audioclf.config import DataSpec, ModelOptions
from audioclf.data import DEMO_MANIFEST
from audioclf.testing import make_manifest_dataset, tiny_train_options, write_manifest
from audioclf.train import train

runner = CliRunner()
LABELS = ["high", "low", "noise"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """3 labels x 8 clips from 4 speakers, plus one row whose file is missing (a skipped clip)."""
    root = tmp_path_factory.mktemp("data")
    path = make_manifest_dataset(root, clips_per_label=8, seconds=1.0, groups=4)
    rows = list(__import__("csv").DictReader(path.open()))
    rows.append({"path": "clips/gone.wav", "label": "low", "speaker": "spk0"})
    return write_manifest(path, rows)


@pytest.fixture(scope="module")
def model_dir(manifest, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("trained") / "tone-model"
    train(DataSpec(data=str(manifest), group_column="speaker", test_size=0.25), ModelOptions(model_config="tiny-wav2vec2"),
          tiny_train_options(epochs=2), output, progress=False, echo=lambda line: None)
    return output


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / model_dir.name))


def _edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def test_the_card_is_hub_metadata_the_hub_parser_reads(model_dir):
    metrics = json.loads((model_dir / "metrics.json").read_text())
    metadata = metadata_load(model_dir / "README.md")
    loaded = ModelCard.load(model_dir / "README.md")

    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "audio-classification"
    assert {"audio-classification", "audioclf", "wav2vec2"} <= set(metadata["tags"])
    assert "base_model" not in metadata and "datasets" not in metadata  # from scratch, on local data
    results = {r.metric_type: r for r in loaded.data.eval_results}
    assert results["accuracy"].metric_value == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    assert results["f1"].metric_value == pytest.approx(metrics["test"]["macro_f1"], abs=1e-4)
    assert results["f1"].metric_args == {"average": "macro"}
    assert {(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) for r in results.values()} == {
        ("audio-classification", "csv", "manifest.csv", "test")}
    assert loaded.data.model_name == "tone-model"


def test_the_card_describes_labels_data_recipe_results_window_use_and_limits(model_dir):
    text = ModelCard.load(model_dir / "README.md").text
    metrics = json.loads((model_dir / "metrics.json").read_text())
    test = metrics["test"]

    assert text.startswith("\n# tone-model\n") or text.lstrip().startswith("# tone-model")
    assert "`high` (0), `low` (1), `noise` (2)" in text
    counts = metrics["data"]["clips"]
    for label in LABELS:  # clips per label in each split, as training used them
        assert f"| `{label}` | {counts['train'][label]} | {counts['validation'][label]} | {counts['test'][label]} |" in text
        per_class = test["per_class"][label]
        assert (f"| `{label}` | {per_class['precision']:.3f} | {per_class['recall']:.3f} | {per_class['f1']:.3f} | "
                f"{per_class['support']} |") in text
    assert sum(counts["test"].values()) == test["n"]
    assert "no `speaker` is on both sides" in text
    assert "1 clip(s) could not be used" in text and "gone.wav" in text
    assert f"| {test['accuracy']:.4f} | {test['macro_f1']:.4f} |" in text
    assert "![Confusion matrix" in text and (model_dir / "confusion.png").read_bytes().startswith(PNG_SIGNATURE)
    # the recipe: its preset and every option it changed, with the preset's value
    assert "Preset `default`, mode `best`" in text
    assert "| `epochs` | `2` | `12` |" in text and "| `group_column` | `speaker` | `none` |" in text
    assert "| `mode` |" not in text  # unchanged options are not listed
    # the window of "One answer per clip": 10 s for a model without a fixed one, windows averaged
    assert "hears 10 s at a time" in text and "10 s windows 5 s apart" in text
    assert 'pipeline("audio-classification", model="tone-model")' in text
    assert "audioclf predict tone-model clip.wav" in text
    assert "No `speaker` of the test clips was heard in training" in text
    assert "synthesised by espeak-ng" not in text  # not the demo data


def test_the_directory_with_its_card_still_loads_in_the_pipeline(model_dir):
    pipe = transformers.pipeline("audio-classification", model=str(model_dir), device="cpu")
    assert pipe.model.config.id2label == dict(enumerate(LABELS))


def test_a_hub_base_model_and_hub_data_are_named_in_the_metadata(model_dir, tmp_path):
    directory = _copy(model_dir, tmp_path)
    _edit_json(directory / "train_config.json",
               lambda c: c["model"].update(model="facebook/wav2vec2-base", model_config=None))
    _edit_json(directory / "metrics.json", lambda m: m["data"].update(source="PolyAI/minds14", hub_dataset=True))
    card.write_card(directory)

    metadata = metadata_load(directory / "README.md")
    assert metadata["base_model"] == "facebook/wav2vec2-base"
    assert metadata["datasets"] == ["PolyAI/minds14"]
    result = ModelCard.load(directory / "README.md").data.eval_results[0]
    assert (result.dataset_type, result.dataset_name) == ("PolyAI/minds14", "PolyAI/minds14")
    assert "fine-tuned from `facebook/wav2vec2-base` with audioclf." in ModelCard.load(directory / "README.md").text


def test_a_local_base_checkpoint_passes_on_its_base_model_and_license(model_dir, tmp_path):
    """A checkpoint directory with a card of its own (the backbones audioclf installs have one) names the Hub model
    it came from and its license; a model fine-tuned from it inherits both."""
    base = tmp_path / "whisper-tiny.en"
    base.mkdir()
    (base / "README.md").write_text("---\nbase_model: openai/whisper-tiny.en\nlicense: apache-2.0\n---\n# encoder\n")
    directory = _copy(model_dir, tmp_path)
    _edit_json(directory / "train_config.json", lambda c: c["model"].update(model=str(base), model_config=None))
    card.write_card(directory)

    metadata = metadata_load(directory / "README.md")
    assert metadata["base_model"] == "openai/whisper-tiny.en" and metadata["license"] == "apache-2.0"
    assert ("fine-tuned from `openai/whisper-tiny.en` (the local checkpoint `whisper-tiny.en`) with audioclf."
            in ModelCard.load(directory / "README.md").text)


def test_a_base_checkpoint_card_the_hub_parser_refuses_is_ignored(model_dir, tmp_path):
    base = tmp_path / "someones-checkpoint"
    base.mkdir()
    (base / "README.md").write_text("---\nbase_model: [unclosed\n---\n")
    directory = _copy(model_dir, tmp_path)
    _edit_json(directory / "train_config.json", lambda c: c["model"].update(model=str(base), model_config=None))
    card.write_card(directory)
    assert "base_model" not in metadata_load(directory / "README.md")
    assert "fine-tuned from `someones-checkpoint` with audioclf." in ModelCard.load(directory / "README.md").text


def test_a_probe_run_says_what_its_validation_clips_chose(model_dir, tmp_path):
    directory = _copy(model_dir, tmp_path)
    _edit_json(directory / "train_config.json", lambda c: (c["train"].update(mode="probe"),
                                                           c["model"].update(model="someone/encoder", model_config=None)))
    _edit_json(directory / "metrics.json", lambda m: m.update(probe={"mixture": "layer 2", "strength": 0.3}))
    card.write_card(directory)
    text = ModelCard.load(directory / "README.md").text
    assert "a head trained in probe mode on the frozen encoder of `someone/encoder`" in text
    assert "were held out to choose the head's layers and L2 strength" in text
    assert "(layer 2, L2 strength C=0.3)" in text and "| `mode` | `probe` | `best` |" in text


def test_the_demo_data_card_says_its_voices_are_synthetic(model_dir, tmp_path):
    directory = _copy(model_dir, tmp_path)
    _edit_json(directory / "metrics.json", lambda m: m["data"].update(source=str(DEMO_MANIFEST)))
    card.write_card(directory)
    text = ModelCard.load(directory / "README.md").text
    assert "audioclf's bundled demo data" in text and "synthesised by espeak-ng in 128 voices" in text


def test_evaluate_update_card_shows_the_new_figures_and_keeps_the_runs(model_dir, manifest, tmp_path):
    directory = _copy(model_dir, tmp_path)
    before = json.loads((directory / "metrics.json").read_text())
    result = runner.invoke(app, ["evaluate", str(directory), "--data", str(manifest), "--split", "all", "--json", "-q",
                                 "--update-card", "--report-dir", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    after = json.loads((directory / "metrics.json").read_text())
    assert after["test"] == before["test"]  # the training run's record stays
    assert after["evaluation"]["split"] == "all" and after["evaluation"]["report"] == report
    loaded = ModelCard.load(directory / "README.md")
    results = {r.metric_type: r for r in loaded.data.eval_results}
    assert results["accuracy"].metric_value == pytest.approx(report["accuracy"], abs=1e-4)
    assert results["accuracy"].dataset_split == "all"
    assert f"On {report['n']} clips (`audioclf evaluate` on the `all` clips" in loaded.text
    assert f"accuracy {before['test']['accuracy']:.4f}" in loaded.text  # the run's own figures, still named
    assert (tmp_path / "report" / "metrics.json").is_file()


def test_update_card_needs_a_directory_audioclf_trained(model_dir, manifest, tmp_path):
    directory = _copy(model_dir, tmp_path)
    (directory / "metrics.json").unlink()
    result = runner.invoke(app, ["evaluate", str(directory), "--data", str(manifest), "-q", "--update-card"])
    assert result.exit_code == 1
    assert result.output.startswith("error: --update-card:") and "metrics.json" in result.output


def test_update_card_checks_the_card_can_be_written_before_the_work(model_dir, manifest, tmp_path):
    directory = _copy(model_dir, tmp_path)
    (directory / "README.md").unlink()
    (directory / "README.md").symlink_to(tmp_path / "elsewhere.md")  # audioclf replaces no link
    before = (directory / "metrics.json").read_text()
    result = runner.invoke(app, ["evaluate", str(directory), "--data", str(manifest), "-q", "--update-card"])
    assert result.exit_code == 1 and result.output.startswith("error: --update-card ")
    assert "symbolic link" in result.output and (directory / "metrics.json").read_text() == before


def test_an_onnx_export_carries_a_card_of_its_own(model_dir, tmp_path):
    from audioclf.export import export_onnx

    out = tmp_path / "tone-model-onnx"
    export_onnx(model_dir, out)
    metadata = metadata_load(out / "README.md")
    loaded = ModelCard.load(out / "README.md")
    metrics = json.loads((model_dir / "metrics.json").read_text())

    assert "library_name" not in metadata  # ONNX Runtime runs it, not transformers
    assert "onnx" in metadata["tags"] and metadata["pipeline_tag"] == "audio-classification"
    accuracy = next(r for r in loaded.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    assert "This is its ONNX export" in loaded.text and "from transformers import pipeline" not in loaded.text
    assert (out / "confusion.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_model_trained_from_a_backbone_name_names_its_hub_model(tmp_path, monkeypatch):
    from audioclf.card import _base_model

    monkeypatch.chdir(tmp_path)  # no folder of that name here
    assert _base_model({"run": {"model": {"model": "whisper-base"}}}) == "openai/whisper-base"
    assert _base_model({"run": {"model": {"model": "whisper-tiny.en"}}}) == "openai/whisper-tiny.en"
    assert _base_model({"run": {"model": {"model": "not-a-backbone"}}}) is None  # nor a Hub owner/name
