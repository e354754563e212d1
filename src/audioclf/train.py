"""Training: the guide's fine-tuning workflow on the transformers Trainer, with presets that learn.

`train()` reads top to bottom in the order of the work: check the output, load the clips, pick the window,
build the model, fit its head on the frozen encoder (probe.fit_head), fine-tune it with the Trainer (or, in probe
mode, stop there), keep the fine-tuned model where it validates clearly better, else the probe (best mode, the
default), evaluate, and write the model directory atomically.

It runs the same in one process or in several (torchrun, accelerate launch, `audioclf train --nproc`; the plumbing
is in audioclf.distributed): every process computes its share, the Trainer handles DDP, and only the main process
downloads first, prints and writes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import time
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from audioclf import card, files
from audioclf.backbone import language_warning
from audioclf.config import NO_GROUP, DataSpec, ModelOptions, TrainOptions
from audioclf.data import (ClipSet, absolute_source, clip_samples, load_clips, skipped_summary, split_dataset,
                           spoken_languages)
from audioclf.distributed import Processes
from audioclf.errors import ConfigError, DataError, HubError, OutputError
from audioclf.features import (
    CLIP_INDEX_COLUMN,
    WHISPER_MAX_WINDOW_SECONDS,
    BatchFeaturizer,
    ClipTransform,
    TrainingCollator,
    augmentation_from,
)
from audioclf.model import (
    ModelBundle,
    build_model,
    check_model_reference,
    encoder_layers,
    fit_whisper_window,
    freeze_front_end,
    freeze_lowest_layers,
    load_model,
    resolve_config,
    safetensors_problem,
    whole_seconds,
)
from audioclf.probe import EVAL_RIGHT, check_head_fits, fit_head, split_layer_means

BEST_EPOCH_METRIC = "accuracy_then_loss"  # the epoch kept: the highest evaluation accuracy, ties to the lower loss
WINDOW_PERCENTILE = 90  # the default window covers this share of training clips whole
# How metrics.json's figures were scored: validation picks the best epoch quickly; test is what users will get.
SCORING = {"validation": "the first window of each clip (the start, as training evaluates, for speed)",
           "test": "every window of each clip, their probabilities averaged, as predict, evaluate and serve score it"}


@dataclass
class TrainResult:
    output: Path
    metrics: dict
    main_process: bool = True  # False in the other processes of a multi-process run, which print nothing


def training_arguments(options: TrainOptions, checkpoint_dir: Path, progress: bool = True,
                       model_type: str | None = None) -> TrainingArguments:
    """The Trainer's arguments for these options; every epoch is evaluated and checkpointed."""
    return TrainingArguments(
        # Whisper's encoder and head use every parameter they train at every step, so DDP need not look for unused
        # ones (it does by default, and says at every run's first step that it found none). The wav2vec2 family's
        # masked_spec_embed is used only in the steps whose clips get time masks: they keep the default.
        ddp_find_unused_parameters=False if model_type == "whisper" else None,
        output_dir=str(checkpoint_dir),
        learning_rate=options.learning_rate,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.eval_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        num_train_epochs=options.epochs,
        warmup_steps=options.warmup_ratio,
        weight_decay=options.weight_decay,
        logging_steps=options.logging_steps,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        # A small validation share often scores two epochs alike (1.0 on the demo's 70 clips at epochs 4 and 5, whose
        # test accuracies were 0.942 and 0.982); the Trainer would keep the first. The seed preset keeps that rule, the
        # guide's, so its results reproduce.
        metric_for_best_model="accuracy" if options.preset == "seed" else BEST_EPOCH_METRIC,
        greater_is_better=True,
        seed=options.seed,
        data_seed=options.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
    )


def _check_model_options(model_opts: ModelOptions) -> None:
    if bool(model_opts.model) == bool(model_opts.model_config):
        raise ConfigError("give exactly one of --model (a checkpoint) or --model-config (an untrained model)")
    if model_opts.model:
        check_model_reference(model_opts.model)
    else:
        resolve_config(model_opts.model_config)


def _prepare_model(model_opts: ModelOptions, labels: list[str], seed: int) -> ModelBundle:
    _check_model_options(model_opts)
    if model_opts.model_config:
        return build_model(model_opts.model_config, labels, seed=seed, weighted_layer_sum=model_opts.weighted_layer_sum)
    torch.manual_seed(seed)
    return load_model(model_opts.model, labels, weighted_layer_sum=model_opts.weighted_layer_sum)


def _check_hub_access() -> None:
    from audioclf.hub import check_access

    try:
        check_access()
    except HubError as e:
        raise HubError(f"--push-to-hub: {e}; train without it and upload later with `audioclf push`") from e


class _QuietProgress(ProgressCallback):
    """Trainer's progress bars without its raw dict logging; EpochLine prints the summary."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class EpochLine(TrainerCallback):
    """One line of metrics per evaluated epoch; `history` is rebuilt from the Trainer's log, so a resumed
    run reports the epochs from before the interruption too."""

    def __init__(self, echo):
        self.echo = echo
        self.history: list[dict] = []
        self._training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        self.history = epoch_rows(state.log_history)

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self._training or not metrics:
            return  # the final evaluations after training are reported by train() itself
        self.history = epoch_rows(state.log_history)
        row = self.history[-1]
        train_loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
        self.echo(f"epoch {row['epoch']:g}: train loss {train_loss}  eval loss {row['eval_loss']:.4f}  "
                  f"eval accuracy {row['eval_accuracy']:.4f}")


def epoch_rows(log_history: list[dict]) -> list[dict]:
    """One row per evaluation in a Trainer log: epoch, step, the mean training loss logged since the
    previous evaluation (None if none was), eval loss and accuracy."""
    rows, losses = [], []
    for entry in log_history:
        if "loss" in entry:
            losses.append(float(entry["loss"]))
        if "eval_loss" in entry:
            rows.append({"epoch": round(float(entry.get("epoch", 0)), 2), "step": entry.get("step"),
                         "train_loss": float(np.mean(losses)) if losses else None,
                         "eval_loss": entry["eval_loss"], "eval_accuracy": entry.get("eval_accuracy")})
            losses = []
    return rows


def _accuracy(prediction) -> dict:
    """Accuracy, and BEST_EPOCH_METRIC: the accuracy plus less than half a clip's worth (1 / n_clips) that shrinks
    as the mean cross-entropy grows, so it orders evaluations by accuracy, then by the lower loss."""
    logits, labels = _logits_of(prediction), np.asarray(prediction.label_ids)
    accuracy = float((np.argmax(logits, axis=-1) == labels).mean())
    shifted = logits - logits.max(axis=-1, keepdims=True)
    loss = float(np.mean(np.log(np.exp(shifted).sum(axis=-1)) - shifted[np.arange(len(labels)), labels]))
    return {"accuracy": accuracy, BEST_EPOCH_METRIC: accuracy + 0.5 / len(labels) / (1.0 + loss)}


def _logits_of(prediction) -> np.ndarray:
    """The logits of a Trainer prediction (EvalPrediction or PredictionOutput), as float64."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return np.asarray(logits, dtype=np.float64)


def _weighted_loss(weights: torch.Tensor | None):
    """Weighted cross-entropy for the Trainer. Given `num_items_in_batch` (the clips of one update, over every
    process and accumulation step), it is the weighted sum over this batch divided by that count, as the Trainer
    expects of a `compute_loss_func`: it neither divides by the accumulation steps nor undoes DDP's averaging of
    such a loss. The weights average 1 over the training clips, so this is the weighted mean's scale (None: all 1).
    Labels are class ids, or (rows, labels) probabilities for mixup's mixed rows."""

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        labels = labels.to(logits.device)
        weight = None if weights is None else weights.to(logits.device)
        if num_items_in_batch is not None and labels.ndim == 2:
            num_items_in_batch = num_items_in_batch / labels.shape[-1]  # the Trainer counts every soft label's entries
        if num_items_in_batch is None:
            return torch.nn.functional.cross_entropy(logits, labels, weight=weight)
        return torch.nn.functional.cross_entropy(logits, labels, weight=weight, reduction="sum") / num_items_in_batch

    return loss


def _optimizer(model, options: TrainOptions):
    """AdamW with the head (projector, classifier, layer weights) on its own learning rate, and with layer_decay below
    1 each encoder layer on `layer_decay` times the rate of the layer above it (the top one on the encoder's rate;
    what lies below the layers, on the lowest layer's rate times layer_decay)."""
    depth: dict[int, int] = {}  # id of an encoder layer's parameter -> layers above it
    n_layers = 0
    if options.layer_decay < 1:
        layers = encoder_layers(model, "--layer-decay")
        n_layers = len(layers)
        depth = {id(param): n_layers - 1 - index for index, layer in enumerate(layers) for param in layer.parameters()}
    head, encoder = [], {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            if name.split(".")[0] in ("projector", "classifier", "layer_weights"):
                head.append(param)
            else:
                encoder.setdefault(depth.get(id(param), n_layers), []).append(param)
    head_lr = options.head_learning_rate or options.learning_rate
    groups = [{"params": params, "lr": options.learning_rate * options.layer_decay ** below}
              for below, params in sorted(encoder.items())] + [{"params": head, "lr": head_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=options.weight_decay)


FINAL_FOLDER = "final"  # under OUT.partial: the finished model directory, complete once it has this name
TRAINER_STATE_FILE = "trainer_state.json"  # the Trainer writes it last into each checkpoint
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def _output_paths(output: Path) -> tuple[Path, Path]:
    work = output.with_name(output.name + ".partial")
    return work, work / "checkpoints"


@contextmanager
def hold_output(output: Path):
    """The claim of one training run on `output`: a files.OutputLock on it, held by the process that writes it (the
    one that starts the others with --nproc), so a second run on the same output stops with a one-line error
    instead of deleting the first one's OUT.partial. Holding it, it cleans what killed runs left beside `output`
    (files.clean_stale: temporary folders removed, a model moved aside mid-swap put back)."""
    files.check_writable_output(output, "--output", "folder")  # the lock file goes where the output would
    with files.OutputLock(output, "--output", "training run"):
        files.clean_stale(output)
        yield


def _holding_output(train_function):
    """Run train() holding its output (hold_output): the main process of a run does, a process of a multi-process
    run other than the main one (RANK > 0, as torchrun and accelerate set it) does not, and a process that
    `audioclf train --nproc` started finds its launcher's lock already held for it."""

    @functools.wraps(train_function)
    def holding(data, model_opts, options, output, *args, **kwargs):
        if os.environ.get("RANK", "0") != "0":
            return train_function(data, model_opts, options, output, *args, **kwargs)
        with hold_output(Path(output)):
            return train_function(data, model_opts, options, output, *args, **kwargs)

    return holding


def check_run(output: Path, model_opts: ModelOptions, *, overwrite: bool = False, resume: bool = False,
              push_to_hub: bool = False) -> str | None:
    """What train() checks before any work: the output, the checkpoint to resume from, the Hub, the model.
    It only reads, so every process of a run can make the same checks and meet the same error; `audioclf train
    --nproc` makes them once before launching. Returns the checkpoint to resume from, if resuming and there is no
    finished model to install."""
    output = Path(output)
    work, checkpoints = _output_paths(output)
    files.check_writable_output(output, "--output", "folder", overwrite=overwrite)
    finished = finished_model(output)
    if finished is not None and not resume:
        raise OutputError(f"--output {output}: {finished} holds the finished model of an earlier run, not yet moved "
                          f"to {output}; pass --resume to install it, or delete {work} to discard it")
    last_checkpoint = None
    if resume and finished is None:
        chosen, incomplete = resume_checkpoint(checkpoints)
        if chosen is None:
            why = "; ".join(f"{path.name} {problem}" for path, problem in incomplete)
            raise ConfigError(f"--resume: no {'complete ' if incomplete else ''}checkpoint to resume from in "
                              f"{checkpoints}" + (f" ({why})" if why else ""))
        last_checkpoint = str(chosen)
    if push_to_hub:
        _check_hub_access()
    _check_model_options(model_opts)  # a bad model is reported before the data is scanned
    return last_checkpoint


def finished_model(output: Path) -> Path | None:
    """OUT.partial/final where it holds a finished model that is not yet at `output` (a run stopped between
    writing it and installing it); None where there is none, or it is the model already at `output` (a run stopped
    while removing OUT.partial)."""
    final = _output_paths(Path(output))[0] / FINAL_FOLDER
    if not all((final / name).is_file() for name in (files.MODEL_CONFIG_FILE, files.METRICS_FILE)):
        return None
    return None if Path(output).is_dir() and files.same_files(final, output) else final


def resume_checkpoint(checkpoints: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint under `checkpoints` (None where there is none) and each newer one that is not,
    with what is wrong with it (checkpoint_problem)."""
    if not checkpoints.is_dir():
        return None, []
    found = [(int(match[1]), path) for path in checkpoints.iterdir()
             if (match := CHECKPOINT_NAME.fullmatch(path.name)) and path.is_dir()]
    incomplete = []
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, incomplete
        incomplete.append((path, problem))
    return None, incomplete


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What makes a Trainer checkpoint folder unusable for --resume (a save cut off by a kill or a full disk), or
    None. Looks at the trainer state (written last), the weights (their safetensors header against the file's size)
    and torch's files (their zip directory, at the end of the file), without loading any of them."""
    if not (checkpoint / TRAINER_STATE_FILE).is_file():
        return f"has no {TRAINER_STATE_FILE} (its save did not finish)"
    if not any(checkpoint.glob("*.safetensors")) and not any(checkpoint.glob("pytorch_model*.bin")):
        return "has no model weights"
    for path in sorted(checkpoint.iterdir()):
        if path.suffix == ".safetensors":
            whole = safetensors_problem(path) is None
        else:
            try:
                if path.suffix == ".json":
                    json.loads(path.read_text(encoding="utf-8"))
                elif path.suffix in (".pt", ".pth", ".bin"):
                    zipfile.ZipFile(path).close()
                whole = True
            except (OSError, ValueError, zipfile.BadZipFile):
                whole = False
        if not whole:
            return f"has {path.name} cut short or corrupt"
    return None


def _drop_incomplete_checkpoints(checkpoints: Path, chosen: str, echo) -> None:
    """Remove the checkpoints newer than `chosen` that a kill left half written (the Trainer would count them among
    its newest), saying so in one line."""
    _, incomplete = resume_checkpoint(checkpoints)
    if not incomplete:
        return
    for path, _ in incomplete:
        shutil.rmtree(path, ignore_errors=True)
    echo(f"--resume: {'; '.join(f'{path.name} {problem}' for path, problem in incomplete)}; removed "
         f"{'it' if len(incomplete) == 1 else 'them'} and resuming from {Path(chosen).name}")


def _install(work: Path, output: Path, overwrite: bool) -> None:
    """Put OUT.partial/final at `output`, then remove OUT.partial. The model is copied as hard links, so
    OUT.partial/final stays whole until `output` holds it, whenever the run is stopped (see finished_model)."""
    files.install_copy(work / FINAL_FOLDER, output, overwrite=overwrite)  # an old model goes once this is in place
    shutil.rmtree(work, ignore_errors=True)


def _install_finished(final: Path, output: Path, overwrite: bool, processes: Processes, echo) -> TrainResult:
    """--resume of a run stopped after its model was finished: install that model, train nothing."""
    metrics = None
    if processes.is_main:
        echo(f"--resume: {final} holds the finished model of the earlier run; installing it at {output}")
        metrics = json.loads((final / files.METRICS_FILE).read_text(encoding="utf-8"))
        _install(final.parent, output, overwrite)
    return TrainResult(output=output, metrics=processes.broadcast(metrics), main_process=processes.is_main)


@_holding_output
def train(data: DataSpec, model_opts: ModelOptions, options: TrainOptions, output: Path, *, overwrite: bool = False,
          resume: bool = False, push_to_hub: bool = False, hub_model_id: str | None = None, progress: bool = True,
          echo=print, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Fine-tune a classifier on `data` and write a Hugging Face model directory to `output`.

    Work happens in `<output>.partial/` (checkpoints, for --resume); `output` appears only when complete. A second
    run on the same output is refused while one holds it (hold_output). With `resume`, a finished model left in
    OUT.partial/final is installed without training again.
    Started in several processes (torchrun, accelerate launch), each trains on its share of every batch and
    returns the same result; only the main process prints, shows progress and writes.
    """
    started = time.monotonic()
    transformers.utils.logging.disable_progress_bar()  # per-shard save bars; the Trainer keeps its own
    output = Path(output)
    processes = Processes()
    if not processes.is_main:
        echo, progress = (lambda line: None), False
    if options.nproc > 1 and processes.count == 1:
        raise ConfigError(f"--nproc {options.nproc}: train() runs in the processes that call it; start them with "
                          f"`audioclf train --nproc {options.nproc}`, torchrun or accelerate launch")
    work, checkpoints = _output_paths(output)
    last_checkpoint = check_run(output, model_opts, overwrite=overwrite, resume=resume, push_to_hub=push_to_hub)
    finished = finished_model(output) if resume else None
    processes.wait()  # every process has looked at the output before the main one changes anything
    if finished is not None:
        return _pushed(_install_finished(finished, output, overwrite, processes, echo), push_to_hub, hub_model_id, echo)
    if processes.is_main and not resume and work.exists():
        shutil.rmtree(work)
    if processes.is_main and resume:
        _drop_incomplete_checkpoints(checkpoints, last_checkpoint, echo)
    if options.threads:
        torch.set_num_threads(options.threads)

    # The main process alone downloads (a Hub dataset) and scans the clips; the others wait for its ClipSet (Arrow
    # tables: in memory, or memory-mapped files that travel by path), so the data is prepared once, never raced.
    clips = processes.broadcast(load_clips(data, split=True, progress=progress) if processes.is_main else None)
    skipped = _probe_skipped(model_opts, options)  # before a model is built; _head_problem may add a reason after
    train_split, eval_split, test_split = _choose_splits(clips, options, data, fine_tune_only=skipped is not None)
    echo(f"data: {len(clips.labels)} labels; {len(train_split)} training, "
         + (f"{len(eval_split)} evaluation" if eval_split is not None else
            f"no evaluation clips (too few to hold {options.validation_min_clips} of every label)")
         + (f", {len(test_split)} test clips" if test_split is not None else " clips")
         + (f"; split {clips.grouping}" if clips.group_column or clips.derived_split else ""))
    for line in skipped_summary(clips.problems, f"{output / files.METRICS_FILE} (problems)"):
        echo(line)
    languages = spoken_languages(data, clips)

    def built(opts: ModelOptions):
        """_built, and the warning of an English-only encoder meeting other languages, once, before any training."""
        nonlocal languages
        bundle, window, featurizer = _built(opts, clips, train_split, options, processes, echo)
        warning = language_warning(opts.model or opts.model_config, bundle.model.config, languages)
        if warning:
            echo(warning)
        languages = {}
        return bundle, window, featurizer

    splits = (train_split, eval_split, test_split)
    metrics = {"labels": clips.labels, "problems": [asdict(p) for p in clips.problems],
               "data": card.data_record(data, clips, dict(zip(("train", "validation", "test"), splits))),
               "threads": torch.get_num_threads()}

    # The candidates: the probe head on the frozen encoder (probe and best modes), the fine-tuned model (finetune and
    # best modes, where there are evaluation clips to judge its epochs); best keeps the probe unless fine-tuning
    # validates clearly better (keep_better).
    candidates: dict[str, dict] = {}
    if options.mode in ("probe", "best") and skipped is None:
        probe_opts = model_opts if model_opts.weighted_layer_sum is not None else \
            replace(model_opts, weighted_layer_sum=True)  # the probe trains exactly this head
        model_opts = probe_opts if options.mode == "probe" else model_opts
        bundle, window, featurizer = built(probe_opts)
        skipped = _head_problem(bundle, options)
        if skipped is None:
            candidate_started = time.monotonic()
            probed, right = _train_probe(bundle, featurizer, splits, window, options, processes, echo, progress,
                                         clips.group_column)
            candidates["probe"] = {"bundle": bundle, "window": window, "metrics": probed, "right": right,
                                   "seconds": round(time.monotonic() - candidate_started, 1)}
    if skipped is not None:
        echo(f"probe: skipped ({skipped}); fine-tuning alone")
    if options.mode == "finetune" or options.mode == "best" and eval_split is not None:
        bundle, window, featurizer = built(model_opts)
        candidate_started = time.monotonic()
        fine_tuned, right = _fine_tune(bundle, featurizer, splits, window, model_opts, options, checkpoints,
                                       last_checkpoint, processes, progress, echo, callbacks)
        candidates["finetune"] = {"bundle": bundle, "window": window, "metrics": fine_tuned, "right": right,
                                  "seconds": round(time.monotonic() - candidate_started, 1)}
    elif options.mode == "best":
        echo(f"fine-tuning: skipped; no validation share holds {options.validation_min_clips} clips of every label, "
             "so no epoch could be judged: kept the probe, chosen by cross-validation")
    if not candidates:
        raise ConfigError(f"--mode best: too few clips to fine-tune with a validation share and no probe head to fit "
                          f"({skipped}); pass --mode finetune, or a smaller --validation-min-clips")
    kept, disagreements = keep_better({name: candidate["right"] for name, candidate in candidates.items()})
    if options.mode == "best" and len(candidates) == 2:
        probe_figures, tuned_figures = (candidates[name]["metrics"]["validation"] for name in ("probe", "finetune"))
        echo(f"kept: the {'probe' if kept == 'probe' else 'fine-tuned model'} (validation accuracy "
             f"{probe_figures['accuracy']:.4f} probe, {tuned_figures['accuracy']:.4f} fine-tuned; "
             f"{card.disagreements_text(disagreements, kept)})")
    bundle, window = candidates[kept]["bundle"], candidates[kept]["window"]
    metrics["window_seconds"] = window
    metrics.update(candidates[kept]["metrics"])
    if options.mode == "best":
        metrics["kept"] = kept
        if disagreements:
            metrics["disagreements"] = disagreements
        if skipped is not None:
            metrics["probe_skipped"] = skipped
        recorded = {"probe": ("probe",), "finetune": ("history",)}  # the head chosen, or the epochs
        metrics["candidates"] = {name: {"validation": candidate["metrics"]["validation"], "seconds": candidate["seconds"],
                                        **{key: candidate["metrics"][key] for key in recorded[name]}}
                                 for name, candidate in candidates.items()}
    if test_split is not None and processes.is_main:
        metrics["test"] = score_test_split(bundle, window, clips, test_split, options.eval_batch_size, progress)
        for name, candidate in metrics.get("candidates", {}).items():  # for the record: the choice never sees test
            report = metrics["test"] if name == kept else score_test_split(
                candidates[name]["bundle"], candidates[name]["window"], clips, test_split, options.eval_batch_size,
                progress)
            candidate["test"] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    metrics["scoring"] = SCORING
    metrics["train_seconds"] = round(time.monotonic() - started, 1)

    if processes.is_main:
        as_run = replace(options, nproc=processes.count)  # so `--config train_config.json` has the same global batch
        resolved = {"data": asdict(recorded_data(data, clips)), "model": asdict(recorded_model(model_opts)),
                    "train": asdict(as_run), "window_seconds": window,
                    "versions": {"transformers": transformers.__version__, "torch": torch.__version__}}
        with files.AtomicDirectory(work / FINAL_FOLDER, overwrite=True) as staging:  # OUT.partial/final: complete
            bundle.save(staging)
            files.write_json(staging / files.TRAIN_CONFIG_FILE, resolved)
            files.write_json(staging / files.METRICS_FILE, metrics)
            files.write_text(staging / files.LABELS_FILE, "".join(label + "\n" for label in clips.labels))
            card.write_card(staging, output.name)  # README.md and confusion.png, from the files above
        _install(work, output, overwrite)
    metrics = processes.broadcast(metrics)  # the others return once the model directory is in place
    return _pushed(TrainResult(output=output, metrics=metrics, main_process=processes.is_main), push_to_hub,
                   hub_model_id, echo)


def keep_better(right: dict[str, list[bool]]) -> tuple[str, dict]:
    """Which candidate to keep, of "probe" and/or "finetune", from whether each got every validation clip right (the
    same clips, in the same order), and the disagreements it chose on ({} for a single candidate).

    The fine-tuned model is kept only when it is clearly better: of the clips the two answer differently, it gets
    right more than the probe does by over one standard deviation of that difference between two equally good
    models (wins - losses > sqrt(wins + losses): a one-sided sign test at about 84%). Otherwise the probe is kept,
    the simpler model. Even scores are not even: the fine-tuned model's figure is its best epoch on these very
    clips, and the probe's final fit goes on to learn from them too (fit_head's refit). On the learning curve
    (README), a win by one validation clip or a tie broken by the fine-tuned model's lower loss lost on the test clips.
    """
    if len(right) == 1:
        return next(iter(right)), {}
    probe, tuned = (np.asarray(right[name], dtype=bool) for name in ("probe", "finetune"))
    wins, losses = int(np.sum(tuned & ~probe)), int(np.sum(probe & ~tuned))
    kept = "finetune" if wins - losses > math.sqrt(wins + losses) else "probe"
    return kept, {"clips": len(probe), "fine_tuned_only_right": wins, "probe_only_right": losses}


def _right_answers(prediction, labels) -> list[bool]:
    """Whether each clip's top-scoring label is its own, from a Trainer prediction of those clips in their order."""
    logits, label_ids = _logits_of(prediction), np.asarray(prediction.label_ids)
    if not np.array_equal(label_ids, np.asarray(labels)):
        raise RuntimeError("the Trainer's predictions are not in the evaluation clips' order")
    return (logits.argmax(axis=-1) == label_ids).tolist()


def _built(model_opts: ModelOptions, clips: ClipSet, train_split, options: TrainOptions, processes: Processes, echo):
    """The model to train, its window fitted to the training clips and its lower parts frozen as the options say,
    and its featurizer: (bundle, window_seconds, featurizer)."""
    with processes.main_first():  # a Hub checkpoint is downloaded once
        bundle = _prepare_model(model_opts, clips.labels, options.seed)
    window = choose_window_from(train_split, options.max_seconds, bundle.model_type == "whisper")
    fit_whisper_window(bundle, int(window)) if bundle.model_type == "whisper" else None
    if options.freeze_front_end and model_opts.model:  # a random front end must learn, not stay frozen
        freeze_front_end(bundle.model)
    freeze_lowest_layers(bundle.model, options.freeze_layers)
    echo(f"model: {bundle.model_type}, {sum(p.numel() for p in bundle.model.parameters()):,} parameters, "
         f"window {window:g} s at {bundle.sampling_rate} Hz, mode {options.mode}"
         + (f", {processes.count} processes" if processes.count > 1 else ""))
    return bundle, window, BatchFeaturizer(bundle.feature_extractor, bundle.model_type, bundle.uses_attention_mask)


def _probe_skipped(model_opts: ModelOptions, options: TrainOptions) -> str | None:
    """Why the best mode has no probe candidate before a model is built (None: it may have one)."""
    if options.mode == "best" and not model_opts.model:
        return "an untrained encoder's outputs are not worth probing"  # as for --probe-init
    return None


def _head_problem(bundle: ModelBundle, options: TrainOptions) -> str | None:
    """Why the best mode cannot fit a probe head into this model (None: it can); probe mode refuses such a model."""
    if options.mode != "best":
        return None
    try:
        check_head_fits(bundle.model, "--mode best")
    except ConfigError as e:
        return str(e)
    return None


def _pushed(result: TrainResult, push_to_hub: bool, hub_model_id: str | None, echo) -> TrainResult:
    """With --push-to-hub, upload the installed model directory as `audioclf push` does (the main process)."""
    if not push_to_hub or not result.main_process:
        return result
    from audioclf.hub import push

    repo_id = hub_model_id or result.output.name
    try:
        pushed = push(result.output, repo_id)
    except HubError as e:
        raise HubError(f"--push-to-hub: {e}; the model is saved in {result.output}: upload it later with "
                       f"`audioclf push {result.output} {repo_id}`") from e
    echo(f"pushed {len(pushed.files)} files to {pushed.repo_id} ({pushed.commit_url})")
    return result


class _AugmentationEpoch(TrainerCallback):
    """Tells the training clips' transform which epoch begins: their random crops and speeds depend on it."""

    def __init__(self, transform: ClipTransform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.epoch = int(round(state.epoch))


def _fine_tune(bundle, featurizer, splits, window, model_opts, options, checkpoints, resume_from, processes, progress,
               echo, callbacks):
    """The Trainer run: lazy crops and features, optional probe-fitted head, early stopping on accuracy.
    Its best model is left in bundle.model; returns the metrics it measured and whether that model gets each
    evaluation clip right."""
    train_split, eval_split, test_split = splits
    train_split = train_split.add_column(CLIP_INDEX_COLUMN, np.arange(len(train_split)))  # names clips for their draws
    train_transform = ClipTransform(clip_samples, bundle.sampling_rate, window, options.train_crop, options.seed,
                                    options.speed_perturbation,
                                    options.spec_augment if bundle.model_type == "whisper" else 0.0,
                                    augmentation_from(options, clip_samples, bundle.sampling_rate),
                                    partners=train_split.with_format(None) if options.mixup else None)
    train_split.set_transform(train_transform)
    eval_split.set_transform(ClipTransform(clip_samples, bundle.sampling_rate, window, options.eval_crop, options.seed))
    head_fit = None
    if options.probe_init and model_opts.model:  # a random encoder's outputs are not worth probing
        check_head_fits(bundle.model, "--probe-init")
        features, labels = _layer_features(bundle, featurizer, {"train": train_split, "validation": eval_split},
                                           window, options, processes, echo, progress)
        started = time.monotonic()  # not refitted with the evaluation clips: they go on to pick the best epoch
        head_fit = fit_head(bundle.model, features["train"], labels["train"], features["validation"],
                            labels["validation"], options.seed, processes, refit_with_eval=False)
        head_fit.pop(EVAL_RIGHT)
        echo(_head_line(head_fit, started))

    args = training_arguments(options, checkpoints, progress, bundle.model_type)
    epoch_line = EpochLine(echo)
    trainer_callbacks = [epoch_line, _AugmentationEpoch(train_transform), *(callbacks or [])]
    if options.early_stopping_patience:
        trainer_callbacks.append(EarlyStoppingCallback(options.early_stopping_patience))
    loss = None
    n_labels = bundle.model.config.num_labels
    if options.class_weights:
        counts = np.bincount(np.asarray(train_split.with_format(None)["label"]), minlength=n_labels)
        loss = _weighted_loss(torch.tensor(len(train_split) / (n_labels * np.maximum(counts, 1)), dtype=torch.float32))
    elif options.mixup:
        loss = _weighted_loss(None)  # the model's own loss takes no soft labels
    # The classifiers take **kwargs but return a batch-mean loss that ignores num_items_in_batch; told otherwise,
    # the Trainer would neither divide it by the accumulation steps nor keep DDP from multiplying it by the processes.
    bundle.model.accepts_loss_kwargs = False
    trainer = Trainer(
        model=bundle.model, args=args, train_dataset=train_split, eval_dataset=eval_split,
        data_collator=TrainingCollator(featurizer, n_labels), compute_metrics=_accuracy, callbacks=trainer_callbacks,
        compute_loss_func=loss, optimizers=(_optimizer(bundle.model, options), None),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(_QuietProgress())
    trainer.train(resume_from_checkpoint=resume_from)

    trainer.remove_callback(EarlyStoppingCallback)  # it warns on the final, differently named evaluations
    validated = trainer.predict(eval_split)  # the best epoch's model, as evaluate() would score it, and its answers
    right = _right_answers(validated, eval_split.with_format(None)["label"])
    metrics = {"history": epoch_line.history, "validation": _strip(validated.metrics)}
    if head_fit is not None:
        metrics["probe_init"] = head_fit
    bundle.model = trainer.model
    return metrics, right


def _train_probe(bundle, featurizer, splits, window, options, processes, echo, progress,
                 group_column=None) -> tuple[dict, list[bool]]:
    """Probe mode: every split's per-layer means once (disk cache), then the head fitted on them, which is the
    whole training. Without evaluation clips, the head is chosen by cross-validation on the training clips.
    Returns its metrics and whether it got each evaluation clip right (before the refit saw them)."""
    check_head_fits(bundle.model, "--mode probe")
    named = {name: split for name, split in zip(("train", "validation"), splits) if split is not None}
    features, labels = _layer_features(bundle, featurizer, named, window, options, processes, echo, progress)
    groups = splits[0].with_format(None)[group_column] if group_column and "validation" not in named else None
    started = time.monotonic()
    fit = fit_head(bundle.model, features["train"], labels["train"], features.get("validation"), labels.get("validation"),
                   options.seed, processes, refit_with_eval=True, groups=groups)
    echo(_head_line(fit, started))
    right = fit.pop(EVAL_RIGHT)
    # the final fit includes the evaluation clips; their figures are those measured before it saw them
    return {"probe": fit, "validation": {"accuracy": fit["eval_accuracy"], "loss": fit["eval_loss"]}}, right


def _layer_features(bundle, featurizer, splits: dict, window: float, options: TrainOptions, processes: Processes,
                    echo, progress: bool) -> tuple[dict, dict]:
    """probe.split_layer_means of each named split, its clips cut as evaluation cuts them (in the main process;
    None in the others), and each split's labels."""
    features, labels = {}, {}
    for name, split in splits.items():
        started = time.monotonic()
        features[name], cached = split_layer_means(bundle, featurizer, split, window, options.eval_crop, options.seed,
                                                   processes, progress)
        labels[name] = split.with_format(None)["label"]
        echo(f"{name}: layer features of {len(split)} clips " + ("from the cache" if cached else
             f"computed in {time.monotonic() - started:.0f} s"))
    return features, labels


def _head_line(fit: dict, started: float) -> str:
    evaluated = "evaluation" if fit["chosen_by"] == "validation" else fit["chosen_by"]
    return (f"head: {fit['mixture']}, L2 strength C={fit['strength']:g} (best of {fit['candidates']}) in "
            f"{time.monotonic() - started:.1f} s, training accuracy {fit['train_accuracy']:.3f}, {evaluated} accuracy "
            f"{fit['eval_accuracy']:.3f}")


def score_test_split(bundle: ModelBundle, window: float, clips: ClipSet, test_split, batch_size: int,
                 progress: bool) -> dict:
    """The test report of the trained model (evaluate's EvalReport, as a dict), scored exactly as the saved model
    directory will be by predict, evaluate and serve (infer.Classifier with the same window plan), so metrics.json
    and `audioclf evaluate` agree."""
    from audioclf.evaluate import evaluate_clips
    from audioclf.infer import Classifier, TorchBackend

    classifier = Classifier(TorchBackend(bundle), batch_size=batch_size, trained_window_seconds=window)
    return evaluate_clips(classifier, clips, test_split, progress=progress).to_dict()


def choose_window_from(dataset, requested: float | None, whisper: bool) -> float:
    """The clip window: as requested, or the 90th percentile of the training clips' durations rounded up
    to whole seconds, so most clips are seen whole and little of each window is padding."""
    if requested is not None:
        seconds = float(requested)
    else:
        durations = np.asarray(dataset.with_format(None)["duration_seconds"], dtype=float)
        seconds = float(whole_seconds(np.percentile(durations, WINDOW_PERCENTILE)))
    seconds = min(seconds, WHISPER_MAX_WINDOW_SECONDS)  # longer clips are cropped
    return float(whole_seconds(seconds)) if whisper else seconds


def recorded_data(data: DataSpec, clips: ClipSet) -> DataSpec:
    """The data options as train_config.json keeps them, so that `--config` repeats the run from any folder: a local
    source as an absolute path, and the group column the splits used, found or given."""
    group = clips.group_column or (NO_GROUP if data.group_column == NO_GROUP else None)
    return replace(data, data=absolute_source(data.data), group_column=group)


def recorded_model(model_opts: ModelOptions) -> ModelOptions:
    """A local checkpoint or config file as an absolute path; Hub ids and named configs as they are."""
    return replace(model_opts, model=absolute_source(model_opts.model) if model_opts.model else None,
                   model_config=absolute_source(model_opts.model_config) if model_opts.model_config else None)


def _choose_splits(clips: ClipSet, options: TrainOptions, data: DataSpec, fine_tune_only: bool = False):
    """(train, eval, test-or-None). Evaluation uses the source's validation split, or a share of the training clips
    held out (group-disjoint with a group column) that holds at least validation_min_clips of every label, or, with
    validation_size 0, the test split. Where no share can hold that many, eval is None (the probe is then chosen by
    cross-validation), except in finetune mode (or `fine_tune_only`), whose epochs need judging: it holds out one clip
    of every label."""
    splits = clips.splits
    if "train" not in splits:
        raise DataError(f"{data.data}: no training split (found: {', '.join(splits)})")
    test = splits["test"] if "test" in splits else None
    if "validation" in splits:
        return splits["train"], splits["validation"], test
    if options.validation_size > 0:
        held = validation_share(splits["train"], options, clips.group_column, fine_tune_only, clips.group_found)
        if held is None:
            return splits["train"], None, test
        return held["train"], held["validation"], test
    if test is None:
        raise DataError(f"{data.data}: nothing to evaluate on; give it a test split or a --validation-size above 0")
    return splits["train"], test, None


def validation_share(train_split, options: TrainOptions, group_column: str | None, fine_tune_only: bool = False,
                     group_found: bool = False):
    """The training clips split into train and validation (split_dataset: stratified, or group-disjoint), the
    validation side at least options.validation_size of them and validation_min_clips of every label, each label
    keeping as many for training. Where no split can, None (the probe is then chosen by cross-validation), but in
    finetune mode or with `fine_tune_only` (nothing to probe) one clip of each, as long as one is left to train on."""
    split = functools.partial(split_dataset, train_split, options.validation_size, options.seed, group_column,
                              names=("train", "validation"), found=group_found)
    try:
        return split(min_per_label=options.validation_min_clips)
    except DataError:
        if not (fine_tune_only or options.mode == "finetune"):
            return None  # the probe is chosen by cross-validation instead
        if options.validation_min_clips == 1:
            raise
    return split(min_per_label=1)


def _strip(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        for prefix in ("eval_", "test_"):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key in ("accuracy", "loss"):
            out[key] = float(value)
    return out
