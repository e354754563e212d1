"""train.py and the `train` command: tiny random models learn the tone classes, the saved directory is what
transformers' own pipeline loads and agrees with, the seed preset is the guide's recipe, interrupted runs resume,
the output appears only when complete, the resolved config round-trips, and mistakes end in one-line errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import transformers
import yaml
from transformers import AutoModelForAudioClassification, TrainerCallback
from typer.testing import CliRunner

import audioclf
import audioclf.errors
from audioclf.cli import app
from audioclf.config import DataSpec, ModelOptions, read_config_file, resolve_options, resolve_run
from audioclf.errors import OutputExistsError
from audioclf.model import build_model
from audioclf.data import load_clips
from audioclf.testing import (TONE_CLASSES, class_clip, make_folder_dataset, make_manifest_dataset, tiny_train_options,
                              write_clip)
from audioclf.train import _optimizer, keep_better, training_arguments, train, validation_share

runner = CliRunner()
LABELS = ["high", "low", "noise"]  # the folder's labels, in the sorted order training gives them ids
MODEL_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "metrics.json", "train_config.json",
               "labels.txt"}
# Whisper's random convolutions make a signal too faint next to its position table to learn from when frozen
LEARNING = {
    "tiny-wav2vec2": {},
    "tiny-whisper": dict(learning_rate=3e-3, head_learning_rate=3e-3, freeze_front_end=False),
}


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    """3 labels x 16 one-second clips at 8 kHz: 38 for training (10 of them for validation), 10 for testing."""
    return make_folder_dataset(tmp_path_factory.mktemp("tones"), clips_per_label=16, seconds=1.0, sampling_rate=8000)


@pytest.fixture(scope="module")
def small_tones(tmp_path_factory) -> Path:
    """3 labels x 6 short clips, for runs whose learning is beside the point."""
    return make_folder_dataset(tmp_path_factory.mktemp("small"), clips_per_label=6, seconds=0.5, sampling_rate=8000)


@pytest.fixture(scope="module", params=sorted(LEARNING))
def trained(request, tones, tmp_path_factory):
    name = request.param
    output = tmp_path_factory.mktemp(name) / "model"
    result = train(DataSpec(data=str(tones)), ModelOptions(model_config=name), tiny_train_options(**LEARNING[name]),
                   output, progress=False, echo=lambda line: None)
    return name, result


def _quick(**overrides):
    return tiny_train_options(epochs=2, **overrides)


# --- learning -----------------------------------------------------------------------------------


def test_tiny_model_learns_the_tones(trained):
    name, result = trained
    history = result.metrics["history"]

    assert [row["epoch"] for row in history] == [float(e) for e in range(1, 9)]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert result.metrics["test"]["accuracy"] > 0.5  # chance is 1/3
    assert result.metrics["labels"] == LABELS
    assert result.metrics["window_seconds"] == 1.0  # every clip lasts 1 s


def test_output_is_a_complete_model_directory(trained):
    name, result = trained
    output = result.output

    assert {p.name for p in output.iterdir()} >= MODEL_FILES
    assert not output.with_name(output.name + ".partial").exists()
    assert json.loads((output / "metrics.json").read_text()) == result.metrics
    assert (output / "labels.txt").read_text().splitlines() == LABELS
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {str(i): label for i, label in enumerate(LABELS)}
    if name == "tiny-whisper":  # the encoder was cut to the 1 s window, and the extractor with it
        assert config["max_source_positions"] == 50
        assert json.loads((output / "preprocessor_config.json").read_text())["chunk_length"] == 1


@pytest.fixture(scope="module")
def clips_16k(tmp_path_factory) -> list[tuple[Path, np.ndarray]]:
    """Two clips per label at the models' rate, of different lengths, written as float WAV so the file holds
    exactly the array that is handed to the pipeline."""
    root = tmp_path_factory.mktemp("clips16k")
    out = []
    for i, label in enumerate(TONE_CLASSES):
        for j, seconds in enumerate((1.0, 0.7 + 0.3 * i)):
            samples = class_clip(label, seconds, 16000, seed=5000 + 10 * i + j)
            out.append((write_clip(root / f"{label}_{j}.wav", samples, 16000, subtype="FLOAT"), samples))
    return out


def test_pipeline_classifier_and_cli_agree(trained, clips_16k):
    _, result = trained
    pipe = transformers.pipeline("audio-classification", model=str(result.output), device="cpu")
    classifier = audioclf.load_classifier(result.output)
    predicted = runner.invoke(app, ["predict", str(result.output), *(str(p) for p, _ in clips_16k), "--json",
                                    "--top-k", str(len(LABELS))])
    assert predicted.exit_code == 0, predicted.output
    cli_rows = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [row["path"] for row in cli_rows] == [str(p) for p, _ in clips_16k]

    for (path, samples), cli_row in zip(clips_16k, cli_rows):
        reference = pipe({"raw": samples, "sampling_rate": 16000}, top_k=None)
        ours = classifier.classify(samples, top_k=None)
        for candidate in (ours, cli_row["predictions"]):
            assert candidate[0]["label"] == reference[0]["label"], path
            scores = {p["label"]: p["score"] for p in candidate}
            assert set(scores) == set(LABELS)
            for p in reference:
                assert scores[p["label"]] == pytest.approx(p["score"], abs=1e-4), path


# --- the epoch kept -----------------------------------------------------------------------------


def test_kept_epoch_is_the_most_accurate_then_the_lowest_loss(tmp_path):
    from transformers import EvalPrediction

    from audioclf.train import BEST_EPOCH_METRIC, _accuracy

    labels = np.array([0, 1, 1, 0])
    scores = {}
    for name, logits in {"3 of 4": [[1, 0], [0, 1], [0, 1], [0, 1]],
                         "3 of 4, surer": [[3, 0], [0, 3], [0, 3], [0, 1]],
                         "4 of 4, barely": [[0.1, 0], [0, 0.1], [0, 0.1], [0.1, 0]]}.items():
        logits = np.array(logits, dtype=np.float32)
        scores[name] = _accuracy(EvalPrediction(predictions=logits, label_ids=labels))
        loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
        assert scores[name][BEST_EPOCH_METRIC] == pytest.approx(scores[name]["accuracy"] + 0.5 / 4 / (1 + loss))

    assert [scores[name]["accuracy"] for name in scores] == [0.75, 0.75, 1.0]
    assert sorted(scores, key=lambda name: scores[name][BEST_EPOCH_METRIC]) == ["3 of 4", "3 of 4, surer", "4 of 4, barely"]
    assert training_arguments(resolve_options("default", {}), tmp_path).metric_for_best_model == BEST_EPOCH_METRIC


# --- the seed preset ----------------------------------------------------------------------------


def test_seed_preset_is_the_guides_recipe(tmp_path):
    options = resolve_options("seed", {})
    args = training_arguments(options, tmp_path)

    assert args.learning_rate == 3e-5
    assert args.per_device_train_batch_size == 32
    assert args.gradient_accumulation_steps == 4
    assert args.per_device_eval_batch_size == 32
    assert args.num_train_epochs == 10
    assert args.warmup_steps == 0.1  # transformers 5 reads a value below 1 as a share of the updates
    assert args.get_warmup_steps(100) == 10
    assert args.logging_steps == 10
    assert args.eval_strategy == "epoch"
    assert args.save_strategy == "epoch"
    assert args.load_best_model_at_end is True
    assert args.metric_for_best_model == "accuracy"  # ties to the first such epoch, as the Trainer keeps them
    assert args.weight_decay == 0.0  # TrainingArguments' default, which the guide keeps
    # the guide's feature extractor call: max_length = 1 s of samples, truncation from the start
    assert options.max_seconds == 1.0
    assert options.train_crop == options.eval_crop == "start"
    assert options.head_learning_rate is None and options.freeze_front_end is False
    assert options.validation_size == 0.0 and options.early_stopping_patience is None


def test_flags_override_a_preset():
    options = resolve_options("seed", {"learning_rate": 1e-4, "epochs": None})

    assert options.learning_rate == 1e-4
    assert options.epochs == 10  # None means "not given"
    assert options.batch_size == 32


# --- resume after an interruption --------------------------------------------------------------


class Interrupted(Exception):
    pass


class InterruptAfterFirstCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise Interrupted(f"stopped after saving step {state.global_step}")


def test_interrupted_run_resumes_to_a_complete_model(small_tones, tmp_path):
    output = tmp_path / "model"
    spec, model = DataSpec(data=str(small_tones)), ModelOptions(model_config="tiny-wav2vec2")
    options = tiny_train_options(epochs=3)

    with pytest.raises(Interrupted):
        train(spec, model, options, output, progress=False, echo=lambda line: None,
              callbacks=[InterruptAfterFirstCheckpoint()])

    assert not output.exists()
    assert [p.name for p in (tmp_path / "model.partial" / "checkpoints").glob("checkpoint-*")] != []

    result = train(spec, model, options, output, resume=True, progress=False, echo=lambda line: None)

    assert {p.name for p in output.iterdir()} >= MODEL_FILES
    assert not (tmp_path / "model.partial").exists()
    assert json.loads((output / "train_config.json").read_text())["train"]["epochs"] == 3
    assert result.metrics["history"][-1]["epoch"] == 3.0


def test_resumed_history_covers_every_epoch(small_tones, tmp_path):
    output = tmp_path / "model"
    spec, model = DataSpec(data=str(small_tones)), ModelOptions(model_config="tiny-wav2vec2")
    options = tiny_train_options(epochs=3)
    with pytest.raises(Interrupted):
        train(spec, model, options, output, progress=False, echo=lambda line: None,
              callbacks=[InterruptAfterFirstCheckpoint()])

    train(spec, model, options, output, resume=True, progress=False, echo=lambda line: None)

    history = json.loads((output / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1.0, 2.0, 3.0]


class InterruptAfterSecondCheckpoint(TrainerCallback):
    def __init__(self):
        self.saves = 0

    def on_save(self, args, state, control, **kwargs):
        self.saves += 1
        if self.saves == 2:
            raise Interrupted(f"stopped after saving step {state.global_step}")


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_skips_a_half_written_last_checkpoint_and_says_so(small_tones, tmp_path):
    output = tmp_path / "model"
    spec, model = DataSpec(data=str(small_tones)), ModelOptions(model_config="tiny-wav2vec2")
    options = tiny_train_options(epochs=3)
    with pytest.raises(Interrupted):
        train(spec, model, options, output, progress=False, echo=lambda line: None,
              callbacks=[InterruptAfterSecondCheckpoint()])
    checkpoints = tmp_path / "model.partial" / "checkpoints"
    first, last = sorted(checkpoints.iterdir(), key=lambda p: int(p.name.split("-")[1]))
    _cut_in_half(last / "model.safetensors")  # the save a kill (or a power cut) stopped half way

    lines = []
    result = train(spec, model, options, output, resume=True, progress=False, echo=lines.append)

    assert f"--resume: {last.name} has model.safetensors cut short or corrupt; removed it and resuming from " \
           f"{first.name}" in lines
    assert [row["epoch"] for row in result.metrics["history"]] == [1.0, 2.0, 3.0]
    assert {p.name for p in output.iterdir()} >= MODEL_FILES


def test_checkpoint_problem_names_what_a_cut_off_save_left(tmp_path):
    from audioclf.train import checkpoint_problem, resume_checkpoint

    checkpoints = tmp_path / "checkpoints"
    saved = train(DataSpec(data=str(make_folder_dataset(tmp_path / "data", clips_per_label=4, seconds=0.5,
                                                        sampling_rate=8000))),
                  ModelOptions(model_config="tiny-wav2vec2"), tiny_train_options(epochs=1, validation_size=0.25),
                  tmp_path / "model", progress=False, echo=lambda line: None, callbacks=[KeepCheckpoints(checkpoints)])
    assert saved.output.is_dir()
    (good,) = checkpoints.iterdir()
    assert checkpoint_problem(good) is None
    broken = {}
    for name, damage in [("optimizer.pt", _cut_in_half), ("trainer_state.json", _cut_in_half),
                         ("trainer_state.json", Path.unlink), ("model.safetensors", Path.unlink),
                         ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-1]))]:
        copy = checkpoints / f"checkpoint-{100 + len(broken)}"
        shutil.copytree(good, copy)
        damage(copy / name)
        broken[copy.name] = checkpoint_problem(copy)
    assert broken == {
        "checkpoint-100": "has optimizer.pt cut short or corrupt",
        "checkpoint-101": "has trainer_state.json cut short or corrupt",
        "checkpoint-102": "has no trainer_state.json (its save did not finish)",
        "checkpoint-103": "has no model weights",
        "checkpoint-104": "has model.safetensors cut short or corrupt",
    }
    chosen, incomplete = resume_checkpoint(checkpoints)
    assert chosen == good and [p.name for p, _ in incomplete] == sorted(broken, reverse=True)


class KeepCheckpoints(TrainerCallback):
    """Copies each checkpoint as it is saved, before the end of training removes OUT.partial."""

    def __init__(self, into: Path):
        self.into = into

    def on_save(self, args, state, control, **kwargs):
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        shutil.copytree(saved, self.into / saved.name)


class InterruptInstall(Exception):
    pass


def test_a_finished_model_left_in_partial_is_kept_and_installed_by_resume(small_tones, tmp_path, monkeypatch):
    import audioclf.train as training

    output = tmp_path / "model"
    spec, model = DataSpec(data=str(small_tones)), ModelOptions(model_config="tiny-wav2vec2")

    def stopped(*args, **kwargs):
        raise InterruptInstall("stopped before the model was installed")

    with monkeypatch.context() as patch:
        patch.setattr(training.files, "install_copy", stopped)
        with pytest.raises(InterruptInstall):
            train(spec, model, _quick(), output, progress=False, echo=lambda line: None)
    final = tmp_path / "model.partial" / "final"
    assert not output.exists() and {p.name for p in final.iterdir()} >= MODEL_FILES
    metrics = json.loads((final / "metrics.json").read_text())

    for overwrite in (False, True):  # a fresh run, with or without --overwrite, must not delete it unasked
        with pytest.raises(audioclf.errors.OutputError) as refused:
            train(spec, model, _quick(), output, overwrite=overwrite, progress=False, echo=lambda line: None)
        assert str(refused.value) == (f"--output {output}: {final} holds the finished model of an earlier run, not yet "
                                      f"moved to {output}; pass --resume to install it, or delete "
                                      f"{tmp_path / 'model.partial'} to discard it")
    lines = []
    result = train(spec, model, _quick(), output, resume=True, progress=False, echo=lines.append)

    assert lines == [f"--resume: {final} holds the finished model of the earlier run; installing it at {output}"]
    assert result.metrics == metrics == json.loads((output / "metrics.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_resume_without_a_checkpoint_is_an_error(small_tones, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(small_tones), "--model-config", "tiny-wav2vec2",
                                 "--output", str(tmp_path / "model"), "--resume", "-q"])

    _assert_one_line_error(result, "--resume")


# --- atomic output ------------------------------------------------------------------------------


def test_existing_output_is_refused_before_any_work(tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    (output / "keep.txt").write_text("earlier model")

    # the data does not even exist: the output check must come first
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train(DataSpec(data=str(tmp_path / "no-data")), ModelOptions(model_config="tiny-wav2vec2"), _quick(), output,
              progress=False, echo=lambda line: None)
    assert (output / "keep.txt").read_text() == "earlier model"
    assert not (tmp_path / "model.partial").exists()


def test_overwrite_replaces_the_output_only_on_success(small_tones, tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    (output / "keep.txt").write_text("earlier model")
    spec, model = DataSpec(data=str(small_tones)), ModelOptions(model_config="tiny-wav2vec2")

    with pytest.raises(Interrupted):
        train(spec, model, _quick(), output, overwrite=True, progress=False, echo=lambda line: None,
              callbacks=[InterruptAfterFirstCheckpoint()])
    assert [p.name for p in output.iterdir()] == ["keep.txt"]

    train(spec, model, _quick(), output, overwrite=True, progress=False, echo=lambda line: None)

    assert {p.name for p in output.iterdir()} >= MODEL_FILES
    assert not (output / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .partial, no .old-* left behind


# --- config file round trip ---------------------------------------------------------------------


def test_config_file_round_trips_through_train_config_json(small_tones, tmp_path):
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(yaml.safe_dump({
        "data": {"data": str(small_tones), "test_size": 0.25, "seed": 3},
        "model": {"model_config": "tiny-wav2vec2"},
        "train": {"learning-rate": 0.002, "head_learning_rate": 0.01, "batch_size": 4, "epochs": 3,
                  "warmup_ratio": 0.0, "validation_size": 0.2, "early_stopping_patience": 0, "threads": 1},
    }))
    output = tmp_path / "model"

    result = runner.invoke(app, ["train", "--config", str(config_file), "--output", str(output), "--epochs", "2",
                                 "--batch-size", "6", "-q"])

    assert result.exit_code == 0, result.output
    expected = resolve_run({**read_config_file(config_file), "epochs": 2, "batch_size": 6})
    written = resolve_run(read_config_file(output / "train_config.json"))
    assert written == expected
    assert written.data == DataSpec(data=str(small_tones), test_size=0.25, seed=3)
    assert written.model == ModelOptions(model_config="tiny-wav2vec2")
    assert (written.train.learning_rate, written.train.head_learning_rate) == (0.002, 0.01)  # from the file
    assert (written.train.epochs, written.train.batch_size) == (2, 6)  # flags win
    history = json.loads((output / "metrics.json").read_text())["history"]
    assert len(history) == 2


def test_train_config_json_repeats_the_run_from_any_folder(small_tones, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(small_tones, work / "tones")
    monkeypatch.chdir(work)
    (work / "cfg.yaml").write_text("data: tones\nmodel_config: tiny-wav2vec2\nlr: 0.002\nepochs: 1\nthreads: 1\n")

    first = runner.invoke(app, ["train", "--config", "cfg.yaml", "--output", "model", "-q"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = runner.invoke(app, ["train", "--config", str(work / "model" / "train_config.json"), "--output", "again",
                                "-q"])

    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    recorded = json.loads((work / "model" / "train_config.json").read_text())
    assert recorded["data"]["data"] == str((work / "tones").resolve())  # as typed: "tones"
    assert recorded["train"]["learning_rate"] == 0.002  # `lr`, as on the command line
    assert json.loads((elsewhere / "again" / "train_config.json").read_text()) == recorded


def test_config_file_exponent_without_a_dot_is_a_number(small_tones, tmp_path):
    # PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; people write it anyway
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(f"data: {small_tones}\nmodel_config: tiny-wav2vec2\nlearning_rate: 1e-3\nepochs: 1\n"
                           "threads: 1\n")

    result = runner.invoke(app, ["train", "--config", str(config_file), "--output", str(tmp_path / "m"), "-q"])

    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "train_config.json").read_text())["train"]["learning_rate"] == 0.001


def test_config_file_value_of_the_wrong_type_is_a_clear_error(small_tones, tmp_path):
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(f"data: {small_tones}\nmodel_config: tiny-wav2vec2\nbatch_size: four\nepochs: 1\n")

    result = runner.invoke(app, ["train", "--config", str(config_file), "--output", str(tmp_path / "m"), "-q"])

    _assert_one_line_error(result, "batch_size", "four")


# --- errors through the command line ------------------------------------------------------------


def _assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_hub_model_that_cannot_be_found_offline(small_tones, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    result = runner.invoke(app, ["train", "--data", str(small_tones), "--model", "audioclf-tests/no-such-model",
                                 "--output", str(tmp_path / "model"), "-q"])

    _assert_one_line_error(result, "--model", "audioclf-tests/no-such-model", "not in the local cache")
    assert not (tmp_path / "model").exists()


def test_existing_output_needs_overwrite(small_tones, tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    args = ["train", "--data", str(small_tones), "--model-config", "tiny-wav2vec2", "--output", str(output),
            "--epochs", "1", "--threads", "1", "-q"]

    _assert_one_line_error(runner.invoke(app, args), str(output), "--overwrite")

    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in output.iterdir()} >= MODEL_FILES


def test_unknown_preset(small_tones, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(small_tones), "--model-config", "tiny-wav2vec2",
                                 "--output", str(tmp_path / "m"), "--preset", "fastest", "-q"])

    _assert_one_line_error(result, "--preset", "fastest", "seed", "default")


@pytest.mark.parametrize("model_flags", [[], ["--model", "some/model", "--model-config", "tiny-wav2vec2"]],
                         ids=["neither", "both"])
def test_exactly_one_of_model_and_model_config(small_tones, tmp_path, model_flags):
    result = runner.invoke(app, ["train", "--data", str(small_tones), *model_flags, "--output", str(tmp_path / "m"),
                                 "-q"])

    _assert_one_line_error(result, "--model", "--model-config")
    assert not (tmp_path / "m").exists()


def test_unknown_config_key(small_tones, tmp_path):
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(f"data: {small_tones}\nmodel_config: tiny-wav2vec2\nlearning_rat: 0.001\n")

    result = runner.invoke(app, ["train", "--config", str(config_file), "--output", str(tmp_path / "m"), "-q"])

    _assert_one_line_error(result, "learning_rat", "learning_rate")


def test_evaluate_on_labels_the_model_was_not_built_for(small_tones, tmp_path):
    build_model("tiny-wav2vec2", ["cat", "dog"]).save(tmp_path / "pets")

    result = runner.invoke(app, ["evaluate", str(tmp_path / "pets"), "--data", str(small_tones), "-q"])

    line = _assert_one_line_error(result, "cat", "dog")
    assert all(label in line for label in LABELS)


# --- the best mode: probe, fine-tune, keep the better ------------------------------------------------------------


def test_keep_better_keeps_fine_tuning_only_when_it_is_clearly_better_clip_by_clip():
    def kept(probe: str, tuned: str) -> str:  # each clip right (1) or wrong (0), the same clips in the same order
        return keep_better({"probe": [c == "1" for c in probe], "finetune": [c == "1" for c in tuned]})[0]

    assert kept("1111", "1111") == "probe"  # a tie: the simpler model, whose final fit also sees these clips
    assert kept("1110", "1111") == "probe"  # one clip is no evidence (1 - 0 is not above sqrt(1))
    assert kept("1100", "1111") == "finetune"  # two: 2 - 0 > sqrt(2)
    assert kept("1110" "0", "0111" "1") == "probe"  # two won, one lost: 2 - 1 is not above sqrt(3)
    assert kept("1111" "000000", "0111" "111111") == "finetune"  # six won, one lost: 5 > sqrt(7)
    assert kept("1111", "1100") == "probe"
    assert keep_better({"probe": [True, False], "finetune": [False, True]}) == (
        "probe", {"clips": 2, "fine_tuned_only_right": 1, "probe_only_right": 1})
    assert keep_better({"finetune": [False, False]}) == ("finetune", {})  # a single candidate is kept as it is


def _saved_encoder(directory: Path, silent_projection: bool = False) -> Path:
    """A tiny random wav2vec2 saved as a checkpoint to start from (--model), so the best mode probes it. With
    `silent_projection` the feature projection is zero: every frame of every clip is the same to the frozen encoder,
    so no probe can tell the labels apart, while fine-tuning can grow the projection and learn them."""
    bundle = build_model("tiny-wav2vec2", LABELS, seed=0)
    if silent_projection:
        with torch.no_grad():
            bundle.model.wav2vec2.feature_projection.projection.weight.zero_()
            bundle.model.wav2vec2.feature_projection.projection.bias.zero_()
    bundle.save(directory)
    return directory


def test_the_best_mode_keeps_the_probe_when_fine_tuning_does_worse(tones, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    encoder = _saved_encoder(tmp_path / "encoder")
    # fine-tuning that cannot learn: a random head (no probe init) and a learning rate too small to move it
    spoiled = dict(probe_init=False, learning_rate=1e-9, head_learning_rate=1e-9, epochs=1)
    lines: list[str] = []
    best = train(DataSpec(data=str(tones)), ModelOptions(model=str(encoder)), tiny_train_options(**spoiled),
                 tmp_path / "best", progress=False, echo=lines.append)
    probe = train(DataSpec(data=str(tones)), ModelOptions(model=str(encoder)), tiny_train_options(mode="probe"),
                  tmp_path / "probe", progress=False, echo=lambda line: None)

    metrics, candidates = best.metrics, best.metrics["candidates"]
    assert metrics["kept"] == "probe"
    assert candidates["probe"]["validation"]["accuracy"] > candidates["finetune"]["validation"]["accuracy"]
    assert metrics["validation"] == candidates["probe"]["validation"] == probe.metrics["validation"]
    assert any(line.startswith("kept: the probe (validation accuracy") for line in lines)
    disagreements = metrics["disagreements"]
    assert disagreements["clips"] == sum(metrics["data"]["clips"]["validation"].values())
    assert disagreements["probe_only_right"] > disagreements["fine_tuned_only_right"]
    # the model kept is exactly what --mode probe trains: the same head, the same test figures
    assert json.loads((tmp_path / "best" / "config.json").read_text())["use_weighted_layer_sum"] is True
    kept, alone = (AutoModelForAudioClassification.from_pretrained(tmp_path / name).state_dict()
                   for name in ("best", "probe"))
    assert all(torch.equal(kept[name], alone[name]) for name in alone)
    assert metrics["test"] == probe.metrics["test"]
    assert candidates["probe"]["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert [row["epoch"] for row in candidates["finetune"]["history"]] == [1.0]
    text = (tmp_path / "best" / "README.md").read_text()
    assert "a head trained in probe mode on the frozen encoder of `encoder`" in text
    assert "Mode `best` kept the probe head (validation accuracy" in text


def test_the_best_mode_keeps_fine_tuning_when_the_frozen_encoder_tells_nothing(tones, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    encoder = _saved_encoder(tmp_path / "encoder", silent_projection=True)
    learning = dict(probe_init=False, learning_rate=1e-2, head_learning_rate=1e-2)
    result = train(DataSpec(data=str(tones)), ModelOptions(model=str(encoder)), tiny_train_options(**learning),
                   tmp_path / "best", progress=False, echo=lambda line: None)
    alone = train(DataSpec(data=str(tones)), ModelOptions(model=str(encoder)),
                  tiny_train_options(mode="finetune", **learning), tmp_path / "finetune", progress=False,
                  echo=lambda line: None)

    metrics, candidates = result.metrics, result.metrics["candidates"]
    assert candidates["probe"]["validation"]["accuracy"] <= 0.5  # constant features: one label for every clip
    assert metrics["kept"] == "finetune"
    assert candidates["finetune"]["validation"]["accuracy"] > candidates["probe"]["validation"]["accuracy"]
    clips, wins, losses = (metrics["disagreements"][key] for key in ("clips", "fine_tuned_only_right",
                                                                     "probe_only_right"))
    # the counts are the two candidates' validation accuracies, clip by clip
    assert (wins - losses) / clips == pytest.approx(candidates["finetune"]["validation"]["accuracy"]
                                                     - candidates["probe"]["validation"]["accuracy"])
    assert metrics["validation"] == candidates["finetune"]["validation"]
    assert json.loads((tmp_path / "best" / "config.json").read_text())["use_weighted_layer_sum"] is False
    assert candidates["finetune"]["test"]["accuracy"] == metrics["test"]["accuracy"] > 0.5  # chance is 1/3
    assert "Mode `best` kept the fine-tuned model (validation accuracy" in (tmp_path / "best" / "README.md").read_text()
    # the model kept is exactly what --mode finetune trains: same split, seed and Trainer run
    assert metrics["history"] == alone.metrics["history"] and metrics["test"] == alone.metrics["test"]
    kept, tuned = (AutoModelForAudioClassification.from_pretrained(tmp_path / name).state_dict()
                   for name in ("best", "finetune"))
    assert all(torch.equal(kept[name], tuned[name]) for name in tuned)


def test_too_few_clips_to_validate_keep_the_probe_chosen_by_cross_validation(small_tones, tmp_path, monkeypatch):
    """6 clips per label, 1 of them for testing: no share holds 3 of every label and leaves 3 to train on."""
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home"))
    encoder = _saved_encoder(tmp_path / "encoder")
    lines: list[str] = []
    result = train(DataSpec(data=str(small_tones)), ModelOptions(model=str(encoder)), tiny_train_options(),
                   tmp_path / "best", progress=False, echo=lines.append)

    assert result.metrics["kept"] == "probe" and set(result.metrics["candidates"]) == {"probe"}
    assert result.metrics["probe"]["chosen_by"] == "5-fold cross-validation"  # 5 training clips of every label
    assert "validation" not in result.metrics["data"]["clips"]
    assert sum(result.metrics["data"]["clips"]["train"].values()) == 15
    assert any(line.startswith("fine-tuning: skipped; no validation share holds 3 clips") for line in lines)
    text = (tmp_path / "best" / "README.md").read_text()
    assert "chosen by 5-fold cross-validation on the training clips" in text
    assert "without fine-tuning" in text


def test_the_validation_share_grows_to_hold_every_labels_minimum(tones):
    clips = load_clips(DataSpec(data=str(tones)), progress=False)  # 13 training clips of each label
    for minimum in (1, 3, 5):
        held = validation_share(clips.splits["train"], tiny_train_options(validation_size=0.1,
                                                                         validation_min_clips=minimum), None)
        for side in ("train", "validation"):
            counts = np.bincount(held[side]["label"], minlength=3)
            assert counts.min() >= minimum, (minimum, side, counts)
        assert np.bincount(held["validation"]["label"]).tolist() == [max(1, minimum)] * 3  # 10 % of 13 is 1
    too_many = tiny_train_options(validation_min_clips=7)  # 13 cannot keep 7 on both sides
    assert validation_share(clips.splits["train"], too_many, None) is None
    fine_tuning = validation_share(clips.splits["train"], tiny_train_options(validation_min_clips=7, mode="finetune"),
                                   None)
    assert np.bincount(fine_tuning["validation"]["label"]).min() >= 1  # its epochs need judging: one clip of each


def test_the_validation_share_is_group_disjoint_with_every_labels_minimum(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", clips_per_label=12, seconds=0.1, groups=12)
    clips = load_clips(DataSpec(data=str(manifest), group_column="speaker", test_size=0.25), progress=False)
    held = validation_share(clips.splits["train"], tiny_train_options(validation_size=0.1), "speaker")
    assert not set(held["train"]["speaker"]) & set(held["validation"]["speaker"])
    assert np.bincount(held["validation"]["label"], minlength=3).min() >= 3
    assert np.bincount(held["train"]["label"], minlength=3).min() >= 3


def test_layer_decay_gives_each_lower_layer_a_lower_learning_rate():
    model = build_model("tiny-wav2vec2", LABELS, seed=0).model  # two transformer layers
    options = resolve_options("default", {"learning_rate": 1e-4, "head_learning_rate": 1e-3, "layer_decay": 0.5})
    rate_of = {id(param): group["lr"] for group in _optimizer(model, options).param_groups for param in group["params"]}
    named = dict(model.named_parameters())
    assert rate_of[id(named["wav2vec2.encoder.layers.1.attention.k_proj.weight"])] == pytest.approx(1e-4)  # the top
    assert rate_of[id(named["wav2vec2.encoder.layers.0.attention.k_proj.weight"])] == pytest.approx(5e-5)
    assert rate_of[id(named["wav2vec2.feature_projection.projection.weight"])] == pytest.approx(2.5e-5)  # below them
    assert rate_of[id(named["classifier.weight"])] == rate_of[id(named["projector.weight"])] == pytest.approx(1e-3)
    undecayed = _optimizer(model, replace(options, layer_decay=1.0)).param_groups
    assert [group["lr"] for group in undecayed] == [1e-4, 1e-3]  # one rate for the encoder, one for the head


def test_an_english_only_encoder_on_other_languages_is_warned_about_before_training(small_tones, tmp_path):
    """A Whisper with the English-only vocabulary (as tiny.en's config has) and clips said to be French."""
    from audioclf.model import NAMED_CONFIGS

    config = tmp_path / "tiny-whisper-en.json"
    config.write_text(json.dumps({**NAMED_CONFIGS["tiny-whisper"], "vocab_size": 51_864}))
    lines: list[str] = []
    train(DataSpec(data=str(small_tones), language="fr-FR"), ModelOptions(model_config=str(config)),
          tiny_train_options(epochs=1), tmp_path / "model", progress=False, echo=lines.append)
    warnings = [i for i, line in enumerate(lines) if line.startswith("warning:")]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch"))
    assert len(warnings) == 1 and warnings[0] < first_epoch
    assert lines[warnings[0]].startswith(f"warning: the clips are in French (--language fr-FR), but {config} is an "
                                         "English-only encoder")
    lines.clear()
    train(DataSpec(data=str(small_tones), language="en"), ModelOptions(model_config=str(config)),
          tiny_train_options(epochs=1), tmp_path / "english", progress=False, echo=lines.append)
    assert not any(line.startswith("warning:") for line in lines)


def test_soft_labels_of_mixup_get_the_mean_cross_entropy():
    from audioclf.train import _weighted_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.6, 0.4]])
    expected = float(-(soft * torch.log_softmax(logits, dim=1)).sum(dim=1).mean())
    loss = _weighted_loss(None)
    # the Trainer counts every entry of soft labels (2 rows x 3 labels) as an item; the loss is per clip all the same
    assert float(loss({"logits": logits}, soft, num_items_in_batch=torch.tensor(6))) == pytest.approx(expected)
    assert float(loss({"logits": logits}, soft)) == pytest.approx(expected)
    hard = torch.tensor([0, 1])
    assert float(loss({"logits": logits}, hard, num_items_in_batch=torch.tensor(2))) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, hard)))


def test_training_with_every_waveform_augmentation_learns_the_tones(tones, tmp_path):
    augmented = dict(noise_share=0.5, noise_min_snr_db=10.0, noise_max_snr_db=30.0, gain_db=6.0,
                     time_shift_seconds=0.1, mixup=0.4)
    result = train(DataSpec(data=str(tones)), ModelOptions(model_config="tiny-wav2vec2"),
                   tiny_train_options(**augmented), tmp_path / "model", progress=False, echo=lambda line: None)
    losses = [row["train_loss"] for row in result.metrics["history"] if row["train_loss"] is not None]
    assert losses and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert result.metrics["test"]["accuracy"] >= 0.8
    written = json.loads((tmp_path / "model" / "train_config.json").read_text())["train"]
    assert {key: written[key] for key in augmented} == augmented
