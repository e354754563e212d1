"""Model cards: the README.md every model directory carries, in the Hugging Face Hub's format.

`build_card(directory)` reads what a model directory records about itself (config.json and preprocessor_config.json:
the model; train_config.json: the recipe; metrics.json: the data and the test report; onnx_export.json for an ONNX
export) and returns a huggingface_hub `ModelCard`: YAML metadata the Hub reads (library, task, base model, data set,
and a model-index with the test accuracy and macro-F1), then the labels, the data, the recipe, the test results and
their confusion matrix, how audio is windowed, how to use the model, and its limits. `write_card` writes the card and
the confusion-matrix picture beside it, each whole or not at all. `train`, `export onnx`, `audioclf evaluate
--update-card` and `audioclf push` (for a directory that has none) all call it, so every card is built the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from audioclf import files
from audioclf.backbone import KNOWN_BACKBONES
from audioclf.config import DEFAULT_HOP_FRACTION, DEFAULT_WINDOW_SECONDS, DataSpec, ModelOptions, resolve_options
from audioclf.errors import ConfigError, ModelError
from audioclf.features import inference_window_seconds, whisper_window_seconds
from audioclf.files import (CARD_FILE, CONFUSION_PLOT_FILE, EXPORT_RECORD_FILE, METRICS_FILE, MODEL_CONFIG_FILE,
                            PREPROCESSOR_CONFIG_FILE, TRAIN_CONFIG_FILE)

TAGS = ("audio-classification", "audioclf")
WORST_CONFUSIONS = 5  # most confused label pairs the card lists
PROBLEMS_SHOWN = 10  # skipped clips listed by name; the rest are counted
# How a data source is named in the model-index when it is not a Hub id: the datasets loader that reads that kind.
LOCAL_DATASET_TYPES = {"folder": "audiofolder", ".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".parquet": "parquet"}
DEMO_DATA_NOTE = (
    "The data is audioclf's bundled demo (`audioclf data demo-path`): spoken e-banking requests in 14 intents, as in "
    "MInDS-14, synthesised by espeak-ng in 128 voices. The voices are a speech synthesiser's, so the test figures say "
    "what the recipe does with enough speaker variety, not how the model does on real callers: expect less on real "
    "voices, telephone audio and background noise.")


def data_record(spec: DataSpec, clips, splits: dict) -> dict:
    """What the card says about the data that only the training run sees: clips per label in each split (as they
    were used: `splits` maps train/validation/test to a split or None), which splits the source brought, whether the
    source is a Hub dataset. train() keeps it in metrics.json as "data"."""
    import numpy as np

    counts = {}
    for name, split in splits.items():
        if split is not None:
            ids = np.bincount(np.asarray(split.with_format(None)["label"], dtype=np.int64), minlength=len(clips.labels))
            counts[name] = {label: int(n) for label, n in zip(clips.labels, ids)}
    return {"source": clips.source, "hub_dataset": _is_hub_id(spec.data), "source_splits": list(clips.splits),
            "derived_split": clips.derived_split, "group_column": clips.group_column, "clips": counts}


def write_card(directory: str | Path, name: str | None = None) -> Path:
    """Write the model card of `directory` as its README.md, and its test report's confusion matrix as
    confusion.png beside it; returns the card's path. `name` is the model's (default: the directory's name; a
    directory still being built passes the name it will have)."""
    from audioclf.evaluate import EvalReport, plot_confusion

    directory = Path(directory)
    report = _shown_report(_read(directory))
    if report is not None:
        plot_confusion(EvalReport(**report), directory / CONFUSION_PLOT_FILE)
    return files.write_text(directory / CARD_FILE, str(build_card(directory, name)))


def record_evaluation(directory: str | Path, report, data: str, split: str) -> Path:
    """Keep an evaluation (an EvalReport of `data`'s `split`) in the model directory's metrics.json as
    "evaluation", beside the training run's own test figures, and rewrite the card, which then shows it."""
    directory = Path(directory)
    path = directory / METRICS_FILE
    metrics = _json(path) if path.is_file() else {}
    metrics["evaluation"] = {"data": data, "split": split, "report": report.to_dict()}
    files.write_json(path, metrics)
    return write_card(directory)


def build_card(directory: str | Path, name: str | None = None) -> ModelCard:
    """The model card of the model directory (or ONNX export) `directory`, for the model called `name` (default:
    the directory's name); see the module docstring."""
    facts = _read(Path(directory), name)
    body = "\n\n".join(part for part in (
        _title(facts), _labels(facts), _data(facts), _recipe(facts), _results(facts), _window(facts), _usage(facts),
        _limitations(facts)) if part)
    return ModelCard(f"---\n{_metadata(facts).to_yaml()}\n---\n\n{body}\n")


# --- what the directory says -------------------------------------------------------------------------


def _read(directory: Path, name: str | None = None) -> dict:
    if not (directory / MODEL_CONFIG_FILE).is_file():
        raise ModelError(f"{directory}: not a model directory (it has no {MODEL_CONFIG_FILE})")
    config = _json(directory / MODEL_CONFIG_FILE)
    preprocessor = _json(directory / PREPROCESSOR_CONFIG_FILE) if (directory / PREPROCESSOR_CONFIG_FILE).is_file() else {}
    optional = {name: _json(directory / name) if (directory / name).is_file() else None
                for name in (TRAIN_CONFIG_FILE, METRICS_FILE, EXPORT_RECORD_FILE)}
    id2label = {int(i): label for i, label in config.get("id2label", {}).items()}
    return {"name": name or directory.name, "config": config, "sampling_rate": preprocessor.get("sampling_rate"),
            "labels": [id2label[i] for i in sorted(id2label)], "run": optional[TRAIN_CONFIG_FILE] or {},
            "metrics": optional[METRICS_FILE] or {}, "export": optional[EXPORT_RECORD_FILE]}


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return value


def _shown_report(facts: dict) -> dict | None:
    """The test report the card shows: a later `evaluate --update-card` run's, else the training run's."""
    metrics = facts["metrics"]
    if "evaluation" in metrics:
        return metrics["evaluation"]["report"]
    return metrics.get("test")


def _is_hub_id(data: str) -> bool:
    """Whether a data source names a Hub dataset: not a local path, and shaped like `name` or `owner/name` (as
    data._open_source decides)."""
    import re

    text = str(data).strip()
    path = Path(text).expanduser()
    return (not path.exists() and bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text))
            and path.suffix.lower() not in LOCAL_DATASET_TYPES)


def _base_model(facts: dict) -> str | None:
    """The checkpoint the model was fine-tuned from, as a Hub id: the --model given, where that was a Hub id, or the
    base model a local checkpoint's own card names."""
    model = (facts["run"].get("model") or {}).get("model")
    if not model:
        return None
    if not Path(model).expanduser().exists():
        if model in KNOWN_BACKBONES:  # --model whisper-base: the Hub model the backbone is
            return KNOWN_BACKBONES[model].base_model
        return model if "/" in model else None  # the Hub's base_model must be owner/name
    base = _base_card(model).get("base_model")
    return base if isinstance(base, str) else None


def _license(facts: dict) -> str | None:
    """The license a local base checkpoint's card gives, which a model fine-tuned from it keeps; None where unknown."""
    model = (facts["run"].get("model") or {}).get("model")
    license_ = _base_card(model).get("license") if model else None
    return license_ if isinstance(license_, str) else None


def _base_card(model: str) -> dict:
    """The metadata of a local checkpoint's own card; empty where it has none or one the Hub's parser refuses
    (someone else's file: it must not fail a training run at its end)."""
    path = Path(model).expanduser() / CARD_FILE
    try:
        return ModelCard.load(path).data.to_dict() if path.is_file() else {}
    except Exception:  # huggingface_hub raises YAML, value and OS errors alike
        return {}


def _is_demo(facts: dict) -> bool:
    from audioclf.data import DEMO_MANIFEST

    source = (facts["metrics"].get("data") or {}).get("source") or (facts["run"].get("data") or {}).get("data")
    return bool(source) and Path(str(source)).expanduser().resolve() == DEMO_MANIFEST.resolve()


def _dataset(facts: dict) -> tuple[str, str, str | None]:
    """(type, name, config) of the data set, as the model-index names it."""
    spec = facts["run"].get("data") or {}
    record = facts["metrics"].get("data") or {}
    evaluation = facts["metrics"].get("evaluation")
    source = evaluation["data"] if evaluation else (record.get("source") or spec.get("data") or "unknown")
    hub = _is_hub_id(source) if evaluation or "hub_dataset" not in record else record["hub_dataset"]
    if hub:
        return source, source, spec.get("data_config") if not evaluation else None
    if _is_demo(facts) and not evaluation:
        return "csv", "audioclf demo data (synthetic e-banking requests)", None
    path = Path(source)
    kind = LOCAL_DATASET_TYPES.get("folder" if path.suffix == "" else path.suffix.lower(), "audiofolder")
    return kind, path.name or source, None


# --- metadata ------------------------------------------------------------------------------------------


def _metadata(facts: dict) -> ModelCardData:
    report = _shown_report(facts)
    results = None
    if report is not None:
        kind, name, config = _dataset(facts)
        evaluation = facts["metrics"].get("evaluation")
        where = dict(task_type="audio-classification", task_name="Audio classification", dataset_type=kind,
                     dataset_name=name, dataset_config=config,
                     dataset_split=evaluation["split"] if evaluation else "test")
        results = [EvalResult(metric_type="accuracy", metric_name="Accuracy", metric_value=round(report["accuracy"], 4),
                              **where),
                   EvalResult(metric_type="f1", metric_name="Macro-F1", metric_args={"average": "macro"},
                              metric_value=round(report["macro_f1"], 4), **where)]
    record = facts["metrics"].get("data") or {}
    datasets = [record["source"]] if record.get("hub_dataset") else None
    onnx = facts["export"] is not None
    return ModelCardData(
        library_name=None if onnx else "transformers",  # an export is run by ONNX Runtime, not transformers
        pipeline_tag="audio-classification", base_model=_base_model(facts), license=_license(facts),
        datasets=datasets, tags=[*TAGS, facts["config"].get("model_type", "audio"), *(["onnx"] if onnx else [])],
        model_name=facts["name"], eval_results=results,
    )


# --- sections ----------------------------------------------------------------------------------------


def _title(facts: dict) -> str:
    run, export = facts["run"], facts["export"]
    model = run.get("model") or {}
    what = f"A {facts['config'].get('model_type', 'audio')} audio classifier of {len(facts['labels'])} labels"
    if model.get("model"):
        base, shown = _base_model(facts), _shown_model(model["model"])
        named = f"`{base}` (the local checkpoint `{shown}`)" if base and base != shown else f"`{shown}`"
        probe = _kept_probe(facts)
        what += (f", a head trained in probe mode on the frozen encoder of {named}" if probe else
                 f", fine-tuned from {named}")
    elif model.get("model_config"):
        what += f", trained from scratch (`--model-config {model['model_config']}`)"
    lines = [f"# {facts['name']}", "", what + (" with audioclf." if run else ".")]
    if export is not None:
        quantized = " with int8 matrix products" if export.get("quantize") else ""
        lines += ["", f"This is its ONNX export{quantized} (opset {export.get('opset')}) for ONNX Runtime: "
                      f"`audioclf predict` runs it without torch. The export's logits matched torch's within "
                      f"{export.get('max_abs_logit_difference', 0):.1e} on {export.get('parity_clips')} clips"
                      + (f"; int8's top-1 label agreed with fp32's on {export['agreement']:.1%} of "
                         f"{export['agreement_clips']} clips ({export['agreement_data']})"
                         if export.get("agreement") is not None else "") + "."]
    report = _shown_report(facts)
    if report is not None:
        lines += ["", f"Test accuracy **{report['accuracy']:.3f}**, macro-F1 **{report['macro_f1']:.3f}** on "
                      f"{report['n']} clips" + (" (measured on the torch model before export)" if export else "")
                      + "."]
    return "\n".join(lines)


def _shown_model(model: str) -> str:
    """A base model as the card names it: a Hub id as it is, a local checkpoint by its folder name."""
    path = Path(model).expanduser()
    return path.name if path.exists() else model


def _labels(facts: dict) -> str:
    labels = facts["labels"]
    return "## Labels\n\n" + ", ".join(f"`{label}` ({i})" for i, label in enumerate(labels)) + \
        "\n\nThe number after each label is its id in `config.json`'s `id2label`."


def _data(facts: dict) -> str:
    spec = facts["run"].get("data") or {}
    record = facts["metrics"].get("data") or {}
    train = facts["run"].get("train") or {}
    if not spec and not record:
        return ""
    source = record.get("source") or spec.get("data")
    shown = ("audioclf's bundled demo data" if _is_demo(facts) else
             f"the Hub dataset `{source}`" if record.get("hub_dataset") else f"`{Path(str(source)).name}`")
    lines = ["## Data", "", f"Source: {shown}"
             + (f" (config `{spec['data_config']}`)" if spec.get("data_config") else "")
             + (f", its `{spec['data_split']}` split" if spec.get("data_split") else "") + "."]
    group = record.get("group_column") or spec.get("group_column")
    source_splits = record.get("source_splits", [])
    if record.get("derived_split", True):
        held = f"{spec.get('test_size', 0.2):.0%} of the clips were held out for testing"
        lines.append(f"{held}, so that no `{group}` is on both sides." if group else
                     f"{held}, stratified by label.")
    elif "test" in source_splits:
        lines.append("The test clips are the source's own test split.")
    if "validation" in source_splits:
        lines.append("Early stopping and the best epoch were decided on the source's validation split.")
    elif train.get("validation_size", 0) > 0:
        held_counts = record.get("clips") or {}
        fit = facts["metrics"].get("probe") or {}
        if "validation" not in held_counts and fit.get("chosen_by", "validation") != "validation":
            lines.append(f"No share of the training clips could hold {train.get('validation_min_clips', 1)} clips of "
                         f"every label for validation, so the head's layers and L2 strength were chosen by "
                         f"{fit['chosen_by']} on the training clips, then fitted on all of them.")
        else:
            purpose = {"probe": "to choose the head's layers and L2 strength (the final head was then fitted on them "
                                "too)",
                       "best": "to choose the probe head, to pick the best fine-tuning epoch, and to choose between "
                               "the two"}.get(train.get("mode"), "to pick the best epoch")
            n_validation, n_train = (sum((held_counts.get(name) or {}).values()) for name in ("validation", "train"))
            share = (f"{n_validation} of the {n_validation + n_train} training clips ({n_validation / (n_validation + n_train):.0%}"
                     f", at least {train.get('validation_min_clips', 1)} of every label)" if n_validation else
                     f"{train['validation_size']:.0%} of the training clips")
            lines.append(share + (f", no `{group}` on both sides," if group else "") + f" were held out {purpose}.")
    elif train:
        lines.append("The best epoch was picked on the test clips, as the transformers guide does, so the test "
                     "figures are optimistic.")
    counts = record.get("clips") or {}
    if counts:
        splits = [name for name in ("train", "validation", "test") if name in counts]
        header = "| label | " + " | ".join(f"{name} clips" for name in splits) + " |"
        rows = [f"| `{label}` | " + " | ".join(str(counts[name].get(label, 0)) for name in splits) + " |"
                for label in facts["labels"]]
        totals = "| all | " + " | ".join(str(sum(counts[name].values())) for name in splits) + " |"
        lines += ["", header, "|---|" + "---:|" * len(splits), *rows, totals]
    problems = facts["metrics"].get("problems") or []
    if problems:
        lines += ["", f"{len(problems)} clip(s) could not be used and were skipped:", ""]
        lines += [f"- `{p['path']}`: {p['reason']}" for p in problems[:PROBLEMS_SHOWN]]
        if len(problems) > PROBLEMS_SHOWN:
            lines.append(f"- and {len(problems) - PROBLEMS_SHOWN} more (metrics.json lists them all)")
    elif facts["metrics"]:
        lines += ["", "No clip was skipped."]
    return "\n".join(lines)


def _recipe(facts: dict) -> str:
    run, metrics = facts["run"], facts["metrics"]
    train = run.get("train")
    if not train:
        return ""
    preset = train.get("preset", "default")
    lines = ["## Training", "", f"Preset `{preset}`, mode `{train.get('mode', 'full')}`"
             + (f", window {run['window_seconds']:g} s" if run.get("window_seconds") else "")
             + (f", {metrics['train_seconds']:.0f} s end to end" if metrics.get("train_seconds") is not None else "")
             + (f" on {train['nproc']} processes" if train.get("nproc", 1) > 1 else "")
             + (f", {metrics['threads']} torch thread{'s' if metrics['threads'] > 1 else ''}"
                + (" each" if train.get("nproc", 1) > 1 else "") if metrics.get("threads") else "") + "."]
    changed = _changed_options(run)
    if changed:
        lines += ["", f"Options that differ from the `{preset}` preset's (all of them are in `train_config.json`, "
                      "which `audioclf train --config` takes):", "", "| option | value | preset |", "|---|---|---|"]
        lines += [f"| `{name}` | `{_value(value)}` | `{_value(default)}` |" for name, value, default in changed]
    else:
        lines += ["", f"Every option is the `{preset}` preset's (`train_config.json` has them all)."]
    history = metrics.get("history") or []
    if history:
        lines += ["", "| epoch | training loss | validation loss | validation accuracy |", "|---:|---:|---:|---:|"]
        lines += [f"| {row['epoch']:g} | {_number(row.get('train_loss'))} | {_number(row.get('eval_loss'))} | "
                  f"{_number(row.get('eval_accuracy'))} |" for row in history]
        lines += ["", "The model is the epoch with the best validation accuracy."]
    lines += _kept_lines(metrics)
    probe = metrics.get("probe")
    if probe:
        lines += ["", f"The head is a logistic regression on the frozen encoder's pooled layers ({probe.get('mixture')}, "
                      f"L2 strength C={probe.get('strength')})."]
    versions = run.get("versions") or {}
    if versions:
        lines += ["", "Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()) + "."]
    return "\n".join(lines)


def _kept_probe(facts: dict) -> bool:
    """Whether the model is a probe head on the frozen encoder: probe mode's, or the one the best mode kept."""
    return (facts["run"].get("train") or {}).get("mode") == "probe" or facts["metrics"].get("kept") == "probe"


def _kept_lines(metrics: dict) -> list[str]:
    """What the best mode kept, and the validation figures it chose on."""
    kept, candidates = metrics.get("kept"), metrics.get("candidates") or {}
    if kept is None:
        return []
    if "finetune" not in candidates:
        return ["", "Mode `best` kept the probe head without fine-tuning: too few clips to judge the epochs of a "
                    "fine-tuning run."]
    if "probe" not in candidates:
        return ["", f"Mode `best` fine-tuned alone, with no probe head to compare: {metrics.get('probe_skipped')}."]
    probe, tuned = (candidates[name]["validation"] for name in ("probe", "finetune"))
    figures = (f"validation accuracy {probe['accuracy']:.4f} for the probe head on the frozen encoder, "
               f"{tuned['accuracy']:.4f} for the best fine-tuning epoch"
               + (f"; {disagreements_text(metrics['disagreements'], kept)}" if metrics.get("disagreements") else ""))
    if kept == "probe":
        epochs = candidates["finetune"].get("history") or []
        table = ["", "| epoch | training loss | validation loss | validation accuracy |", "|---:|---:|---:|---:|"]
        table += [f"| {row['epoch']:g} | {_number(row.get('train_loss'))} | {_number(row.get('eval_loss'))} | "
                  f"{_number(row.get('eval_accuracy'))} |" for row in epochs]
        return ["", f"Mode `best` kept the probe head ({figures}): fine-tuning did not validate clearly better, so the "
                    "model is the probe. The fine-tuning epochs it was compared with:", *(table if epochs else [])]
    return ["", f"Mode `best` kept the fine-tuned model ({figures})."]


def disagreements_text(disagreements: dict, kept: str) -> str:
    """The best mode's clip-by-clip comparison (train.keep_better's counts) in words, for its output and the card."""
    verdict = "clearly better" if kept == "finetune" else "not clearly better"
    return (f"of {disagreements['clips']} validation clips, the fine-tuned model alone got "
            f"{disagreements['fine_tuned_only_right']} right and the probe alone {disagreements['probe_only_right']}: "
            f"{verdict}")


def _changed_options(run: dict) -> list[tuple[str, object, object]]:
    """(name, value, preset's value) of every option the run set otherwise than its preset (data and model options:
    otherwise than their defaults). The data source and the model are named elsewhere."""
    changed = []
    train = run.get("train") or {}
    try:
        preset = asdict(resolve_options(train.get("preset", "default"), {}))
    except ConfigError:  # a preset this version does not know: compare with nothing
        preset = {}
    for name, value in train.items():
        if name != "preset" and name in preset and preset[name] != value:
            changed.append((name, value, preset[name]))
    for cls, section in ((DataSpec, "data"), (ModelOptions, "model")):
        given = run.get(section) or {}
        for f in fields(cls):
            if f.name in ("data", "model", "model_config") or f.name not in given:
                continue
            if f.default is not None and given[f.name] != f.default or f.default is None and given[f.name] is not None:
                changed.append((f.name, given[f.name], f.default))
    return changed


def _value(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _results(facts: dict) -> str:
    report = _shown_report(facts)
    if report is None:
        return ""
    evaluation = facts["metrics"].get("evaluation")
    if evaluation:
        where = (f"`audioclf evaluate` on the `{evaluation['split']}` clips of `{evaluation['data']}`")
    else:
        where = "the test clips, which training never saw"
    scoring = (facts["metrics"].get("scoring") or {}).get("test", "every window of each clip, their probabilities "
                                                                   "averaged")
    lines = ["## Results", "", f"On {report['n']} clips ({where}), scored as `audioclf predict` scores them ({scoring}):",
             "", "| accuracy | macro-F1 | loss | clips |", "|---:|---:|---:|---:|",
             f"| {report['accuracy']:.4f} | {report['macro_f1']:.4f} | {report['loss']:.4f} | {report['n']} |",
             "", "| label | precision | recall | F1 | clips |", "|---|---:|---:|---:|---:|"]
    for label in report["labels"]:
        c = report["per_class"][label]
        lines.append(f"| `{label}` | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    from audioclf.evaluate import EvalReport

    confusions = EvalReport(**report).worst_confusions(WORST_CONFUSIONS)
    if confusions:
        lines += ["", "Most confused (true label → predicted label: clips):", ""]
        lines += [f"- `{true}` → `{predicted}`: {count}" for true, predicted, count in confusions]
    else:
        lines += ["", "Every test clip got its own label."]
    lines += ["", f"![Confusion matrix: true labels down, predicted across]({CONFUSION_PLOT_FILE})"]
    validation = facts["metrics"].get("validation")
    if validation and "accuracy" in validation:
        which = ("the clips that chose the head, before it was fitted on them" if facts["metrics"].get("probe") else
                 "the clips that picked the best epoch")
        lines += ["", f"Validation accuracy ({which}): {validation['accuracy']:.4f}."]
    if evaluation and facts["metrics"].get("test"):
        test = facts["metrics"]["test"]
        lines += ["", f"The training run's own test figures: accuracy {test['accuracy']:.4f}, macro-F1 "
                      f"{test['macro_f1']:.4f} on {test['n']} clips."]
    return "\n".join(lines)


def _window(facts: dict) -> str:
    config = facts["config"]
    trained = facts["run"].get("window_seconds") or facts["metrics"].get("window_seconds")
    whisper = config.get("model_type") == "whisper" and config.get("max_source_positions")
    fixed = whisper_window_seconds(config["max_source_positions"]) if whisper else None
    window = inference_window_seconds(fixed, trained)
    hop = window * DEFAULT_HOP_FRACTION
    if fixed is not None:
        why = f"Whisper's input window, cut to the {fixed:g} s it was trained on"
    elif trained and trained > DEFAULT_WINDOW_SECONDS:
        why = f"its training window ({trained:g} s), longer than audioclf's {DEFAULT_WINDOW_SECONDS:g} s default"
    else:
        why = ("audioclf's default for models without a fixed window" +
               (f"; it was trained on {trained:g} s crops" if trained else ""))
    rate = facts["sampling_rate"]
    lines = ["## How audio is scored", "",
             f"The model hears {window:g} s at a time ({why}), "
             + (f"mono at {rate} Hz (other rates are resampled). " if rate else "")
             + f"A clip up to {window:g} s long is scored whole, exactly as "
             f"`pipeline(\"audio-classification\")` scores it. A longer recording is cut into {window:g} s windows "
             f"{hop:g} s apart, the last one ending at the recording's end; each window is scored and the recording's "
             f"scores are the mean of its windows'. `audioclf predict`, `audioclf serve`, `audioclf evaluate` and "
             f"the Python API all score this way (`--segments` shows the windows)"
             + (f"; the pipeline alone reads only the first {window:g} s of a longer recording." if fixed is not None
                else "; the pipeline alone scores a longer recording in one pass.")]
    return "\n".join(lines)


def _usage(facts: dict) -> str:
    name = facts["name"]
    lines = ["## How to use", ""]
    if facts["export"] is None:
        lines += ["With transformers (this directory, or its Hub id once pushed):", "", "```python",
                  "from transformers import pipeline", "",
                  f'classifier = pipeline("audio-classification", model="{name}")',
                  'classifier("clip.wav")  # [{"label": ..., "score": ...}, ...], highest first', "```", ""]
    lines += ["With audioclf, which scores long recordings in windows:", "", "```bash",
              f"audioclf predict {name} clip.wav --top-k 3", f"audioclf serve {name}  # HTTP, with /docs", "```", "",
              "```python", "import audioclf", "", f'classifier = audioclf.load_classifier("{name}")',
              'classifier.classify("clip.wav", top_k=3)', "```"]
    return "\n".join(lines)


def _limitations(facts: dict) -> str:
    labels = facts["labels"]
    record = facts["metrics"].get("data") or {}
    spec = facts["run"].get("data") or {}
    report = _shown_report(facts)
    lines = ["## Limitations", "",
             f"- It always answers with one of its {len(labels)} labels, however unlike them the audio is: there is "
             f"no \"none of these\". A low top score is the only hint."]
    if report is not None:
        lines.append(f"- The test figures come from {report['n']} clips: one clip more or less right moves accuracy by "
                     f"{1 / report['n']:.1%}.")
    group = record.get("group_column") or spec.get("group_column")
    if record.get("derived_split", bool(spec)) and not group and (record or spec):
        lines.append("- The split did not keep speakers apart (no group column), so clips of one speaker may be in "
                     "training and in the test: the test figures may overstate accuracy on new speakers.")
    elif group:
        lines.append(f"- No `{group}` of the test clips was heard in training, so the figures are for unseen "
                     f"`{group}` values, but only for the kind of recordings the data holds.")
    if _is_demo(facts):
        lines.append(f"- {DEMO_DATA_NOTE}")
    return "\n".join(lines)
