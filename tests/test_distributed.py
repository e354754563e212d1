"""Training over several processes: `audioclf train --nproc 2` (two gloo processes on the CPU, through the real
command line) ends with the same head fit, metrics and weights as one process at the same global batch and seed,
writes one complete model directory once, and probe mode's sharded encoding gathers to the same features and head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file
from transformers import TrainerCallback
from typer.testing import CliRunner

from audioclf.cli import app
from audioclf.config import DataSpec, ModelOptions, read_config_file, resolve_run
from audioclf.data import clip_samples
from audioclf.errors import ConfigError
from audioclf.features import CLIP_INDEX_COLUMN, ClipTransform
from audioclf.model import build_model
from audioclf.testing import class_clip, tiny_train_options, write_clip, write_manifest
from audioclf.train import train

LABELS = ["high", "low", "noise"]
MODEL_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "metrics.json", "train_config.json",
               "labels.txt"}
SPLIT_CLIPS = {"train": 24, "validation": 8, "test": 8}  # multiples of the global batch of 8: no short or padded batch
# Float32 sums taken in another order (a batch of 8 against two of 4 and an all-reduce) differ in the last bits,
# about 1e-7 relative. Nine AdamW steps carry that into the weights, amplified where a gradient is tiny (a step is
# lr * m / (sqrt(v) + eps)): measured 4e-7. The bound leaves a factor 250 for that; a real difference in what the
# processes train on is far above it (each process cropping from its own random stream instead: 2e-2).
WEIGHT_ATOL = 1e-4
LOSS_ATOL = 1e-4  # losses of the same clips, summed in another order: measured up to 1.3e-6; counted twice: +100%


def _write_manifest(root: Path) -> Path:
    """1.5 s clips, longer than the 1 s window, so random crops and speed perturbation both act."""
    rows = []
    for split, n_clips in SPLIT_CLIPS.items():
        for i in range(n_clips):
            label = LABELS[i % len(LABELS)]
            path = f"clips/{split}_{i:02d}_{label}.wav"
            seed = 10_000 * list(SPLIT_CLIPS).index(split) + i
            write_clip(root / path, class_clip(label, 1.5, 8000, seed=seed), 8000)
            rows.append({"path": path, "label": label, "split": split})
    return write_manifest(root / "manifest.csv", rows)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return _write_manifest(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def whisper_without_dropout(tmp_path_factory) -> Path:
    """A tiny random Whisper saved as a checkpoint (so `--model` runs the probe-fitted head init) with every
    dropout and layer drop off: one process's dropout masks for 8 clips cannot equal two processes' for 4 each."""
    bundle = build_model("tiny-whisper", LABELS, seed=0)
    for name in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "decoder_layerdrop"):
        setattr(bundle.model.config, name, 0.0)
    directory = tmp_path_factory.mktemp("whisper") / "checkpoint"
    bundle.save(directory)
    return directory


def _cli(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`audioclf ARGS` in a fresh interpreter, as a user runs it, with its own feature cache."""
    environment = {**os.environ, "AUDIOCLF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    environment.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-m", "audioclf", *args], capture_output=True, text=True, env=environment,
                          cwd=cwd, timeout=300)


class _FirstClipPerEpoch(TrainerCallback):
    """Records the first training clip's audio and its samples as the data loader serves them as each epoch begins."""

    def __init__(self):
        self.row = None
        self.clips: list[np.ndarray] = []

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.row = train_dataloader.dataset.with_format(None)[0]
        self.clips.append(np.asarray(train_dataloader.dataset[0]["samples"]))


@pytest.mark.parametrize("class_weights", [False, True], ids=["model-loss", "class-weighted-loss"])
def test_two_processes_train_the_same_model_as_one(manifest, whisper_without_dropout, tmp_path, monkeypatch,
                                                  class_weights):
    config_file = tmp_path / "options.yaml"
    config_file.write_text(yaml.safe_dump({
        "data": str(manifest), "model": str(whisper_without_dropout), "mode": "finetune", "max_seconds": 1.0, "epochs": 3,
        "learning_rate": 3e-3, "head_learning_rate": 3e-3, "freeze_front_end": False, "warmup_ratio": 0.0,
        "early_stopping_patience": 0, "class_weights": class_weights, "threads": 1,
    }))
    # one process, batches of 8, in this interpreter
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home-one"))
    run = resolve_run({**read_config_file(config_file), "batch_size": 8, "eval_batch_size": 8})
    first_clips = _FirstClipPerEpoch()
    one = train(run.data, run.model, run.train, tmp_path / "one", progress=False, echo=lambda line: None,
                callbacks=[first_clips])

    # two processes, batches of 4, through the command line
    runs = tmp_path / "runs"
    runs.mkdir()
    done = _cli(["train", "--config", str(config_file), "--output", "two", "--nproc", "2", "--batch-size", "4",
                 "--eval-batch-size", "4", "-q"], home=tmp_path / "home-two", cwd=runs)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("data: ") for line in lines) == 1  # only the main process prints
    assert sum(line.startswith("model saved to two") for line in lines) == 1
    assert "2 processes" in next(line for line in lines if line.startswith("model: "))
    assert "rank1" not in done.stderr  # the other process's output went to its log, not the console
    assert "find_unused_parameters" not in done.stderr  # DDP is told Whisper has none
    two = runs / "two"
    assert sorted(p.name for p in runs.iterdir()) == ["two"]  # no .partial, no .old-*
    assert {p.name for p in two.iterdir()} >= MODEL_FILES
    written = json.loads((two / "train_config.json").read_text())["train"]
    assert (written["nproc"], written["batch_size"], written["class_weights"]) == (2, 4, class_weights)

    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["labels"] == one.metrics["labels"] == LABELS
    assert [row["epoch"] for row in metrics["history"]] == [row["epoch"] for row in one.metrics["history"]] == [1, 2, 3]
    for ours, reference in zip(metrics["history"], one.metrics["history"]):
        assert ours["eval_accuracy"] == reference["eval_accuracy"]
        assert ours["eval_loss"] == pytest.approx(reference["eval_loss"], abs=LOSS_ATOL)
    for split in ("validation", "test"):
        assert metrics[split]["accuracy"] == one.metrics[split]["accuracy"]
        assert metrics[split]["loss"] == pytest.approx(one.metrics[split]["loss"], abs=LOSS_ATOL)
    reference_fit = one.metrics["probe_init"]  # here each process pooled its share of the clips
    assert metrics["probe_init"] == {**reference_fit, "eval_loss": pytest.approx(reference_fit["eval_loss"], abs=LOSS_ATOL)}

    weights, reference = load_file(two / "model.safetensors"), load_file(one.output / "model.safetensors")
    initial = load_file(whisper_without_dropout / "model.safetensors")
    assert weights.keys() == reference.keys()
    largest_difference = max(float(np.abs(weights[k] - reference[k]).max()) for k in weights)
    assert largest_difference < WEIGHT_ATOL
    trained = [k for k in weights if k in initial and weights[k].shape == initial[k].shape]
    assert max(float(np.abs(reference[k] - initial[k]).max()) for k in trained) > 20 * WEIGHT_ATOL

    # the trainer moves the training transform on to each epoch: a clip's crop and speed are those of that epoch
    transform = ClipTransform(clip_samples, 16_000, 1.0, "random", run.train.seed, run.train.speed_perturbation)
    for epoch, served in enumerate(first_clips.clips):
        transform.epoch = epoch
        row = {"audio": [first_clips.row["audio"]], "label": [0], CLIP_INDEX_COLUMN: [first_clips.row[CLIP_INDEX_COLUMN]]}
        np.testing.assert_array_equal(served, transform(row)["samples"][0])
    assert len(first_clips.clips) == 3 and not np.array_equal(first_clips.clips[0], first_clips.clips[1])


def test_the_best_mode_over_two_processes_compares_and_keeps_as_one_does(manifest, whisper_without_dropout,
                                                                         tmp_path, monkeypatch):
    """The two candidates are compared clip by clip on the validation clips: over two processes, the fine-tuned
    model's answers are gathered from both (3 clips a batch: the last batches padded, the padding dropped) and must
    come back in the clips' order, to be paired with the probe's."""
    options = {"data": str(manifest), "model": str(whisper_without_dropout), "mode": "best", "max_seconds": 1.0,
               "epochs": 2, "learning_rate": 3e-3, "head_learning_rate": 3e-3, "warmup_ratio": 0.0, "threads": 1}
    config_file = tmp_path / "options.yaml"
    config_file.write_text(yaml.safe_dump(options))
    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home-one"))
    run = resolve_run({**read_config_file(config_file), "batch_size": 8, "eval_batch_size": 3})
    one = train(run.data, run.model, run.train, tmp_path / "one", progress=False, echo=lambda line: None)
    runs = tmp_path / "runs"
    runs.mkdir()
    done = _cli(["train", "--config", str(config_file), "--output", "two", "--nproc", "2", "--batch-size", "4",
                 "--eval-batch-size", "3", "-q"], home=tmp_path / "home-two", cwd=runs)

    assert done.returncode == 0, done.stderr
    assert sum(line.startswith("kept: ") for line in done.stdout.splitlines()) == 1
    metrics = json.loads((runs / "two" / "metrics.json").read_text())
    assert metrics["kept"] == one.metrics["kept"]
    assert metrics["disagreements"] == one.metrics["disagreements"]
    assert metrics["disagreements"]["clips"] == SPLIT_CLIPS["validation"]
    wins, losses = (metrics["disagreements"][key] for key in ("fine_tuned_only_right", "probe_only_right"))
    accuracies = {name: metrics["candidates"][name]["validation"]["accuracy"] for name in ("probe", "finetune")}
    assert accuracies == {name: one.metrics["candidates"][name]["validation"]["accuracy"] for name in accuracies}
    assert (wins - losses) / SPLIT_CLIPS["validation"] == pytest.approx(accuracies["finetune"] - accuracies["probe"])
    assert metrics["test"]["accuracy"] == one.metrics["test"]["accuracy"]


def test_clip_augmentation_depends_on_clip_and_epoch_not_on_order(manifest):
    audio = [{"path": str(p), "bytes": None} for p in sorted((manifest.parent / "clips").glob("train_0[0-3]_*.wav"))]
    labels = [0] * len(audio)
    transform = ClipTransform(clip_samples, 16_000, 1.0, "random", seed=7, speed_perturbation=0.1)

    together = transform({"audio": audio, "label": labels})["samples"]
    reversed_alone = [transform({"audio": [a], "label": [0]})["samples"][0] for a in reversed(audio)][::-1]
    transform.epoch = 1
    next_epoch = transform({"audio": audio, "label": labels})["samples"]

    for a, b, c in zip(together, reversed_alone, next_epoch):
        np.testing.assert_array_equal(a, b)
        assert a.shape == (16_000,) and not (a.shape == c.shape and np.array_equal(a, c))


def test_probe_mode_over_two_processes_gathers_the_same_features_and_head(manifest, tmp_path, monkeypatch):
    options = ["--mode", "probe", "--model-config", "tiny-wav2vec2", "--max-seconds", "1", "--threads", "1"]
    runs = tmp_path / "runs"
    runs.mkdir()
    done = _cli(["train", "--data", str(manifest), *options, "--output", "two", "--nproc", "2", "-q"],
                home=tmp_path / "home-two", cwd=runs)
    assert done.returncode == 0, done.stderr
    assert sum(line.startswith("head: ") for line in done.stdout.splitlines()) == 1

    monkeypatch.setenv("AUDIOCLF_HOME", str(tmp_path / "home-one"))
    run = resolve_run({"data": str(manifest), "mode": "probe", "model_config": "tiny-wav2vec2", "max_seconds": 1.0,
                       "threads": 1})
    one = train(run.data, run.model, run.train, tmp_path / "one", progress=False, echo=lambda line: None)

    cached = {p.name: np.load(p) for p in (tmp_path / "home-two" / "cache" / "features").glob("*.npy")}
    reference = {p.name: np.load(p) for p in (tmp_path / "home-one" / "cache" / "features").glob("*.npy")}
    # train and validation, with the same fingerprints; the test clips are scored by the saved model, not a cache
    assert cached.keys() == reference.keys() and len(cached) == 2
    assert sorted(len(f) for f in cached.values()) == sorted(SPLIT_CLIPS[name] for name in ("train", "validation"))
    for name in cached:  # one clip per forward pass in either case: the same numbers
        np.testing.assert_allclose(cached[name], reference[name], rtol=0, atol=1e-6)

    metrics = json.loads((runs / "two" / "metrics.json").read_text())
    assert metrics["probe"] == one.metrics["probe"]
    assert metrics["test"]["accuracy"] == one.metrics["test"]["accuracy"]
    head, reference_head = load_file(runs / "two" / "model.safetensors"), load_file(one.output / "model.safetensors")
    for name in head:
        if name.startswith(("projector", "classifier", "layer_weights")):
            np.testing.assert_allclose(head[name], reference_head[name], rtol=0, atol=1e-6)


def test_library_train_does_not_start_processes_itself(manifest, tmp_path):
    with pytest.raises(ConfigError, match="--nproc 2.*torchrun"):
        train(DataSpec(data=str(manifest)), ModelOptions(model_config="tiny-wav2vec2"), tiny_train_options(nproc=2),
              tmp_path / "model", progress=False, echo=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_nproc_below_one_is_a_one_line_error(manifest, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(manifest), "--model-config", "tiny-wav2vec2",
                                      "--output", str(tmp_path / "m"), "--nproc", "0"])

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--nproc 0" in result.stderr
