"""Scores a classifier's predictions against the true labels and writes the evaluation report.

`build_report` turns true label ids and the model's class probabilities into an `EvalReport` (pure functions on
arrays); `write_report` writes it as metrics.json, confusion.png, misclassified.csv and predictions.jsonl, each whole
or not at all (audioclf.files). `evaluate_clips` gets the probabilities from `Classifier.score_clips`, the scoring
every other door uses, so a long clip's label here is the one `predict` gives.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from audioclf import files
from audioclf.errors import ConfigError, DataError, ModelError
from audioclf.files import (CARD_FILE, CONFUSION_PLOT_FILE, METRICS_FILE, MISCLASSIFIED_FILE, PREDICTIONS_FILE,
                            TRAIN_CONFIG_FILE)

TOP_K = 3  # alternatives listed for each misclassified clip
CONFUSION_PLOT_DPI = 120


@dataclass(frozen=True)
class EvalReport:
    """How a classifier did on n labelled clips.

    loss is the mean cross-entropy of the true labels under the scores. per_class maps every label, including those
    absent from the data (support 0), to its precision, recall, f1 and support. confusion[i][j] counts clips of
    labels[i] predicted as labels[j]. misclassified lists the wrong clips in input order, each with its TOP_K
    highest-scoring labels, best first. problems lists the source's clips that were left out, unscored, each as
    `{"path", "reason"}` (unreadable, unlabelled, duplicates). clips holds every clip's `{"path", "label",
    "predictions"}` (all labels, highest first), written as predictions.jsonl but left out of to_dict.
    """

    accuracy: float
    macro_f1: float
    n: int
    loss: float
    labels: list[str]
    per_class: dict[str, dict]
    confusion: list[list[int]]
    misclassified: list[dict]
    problems: list[dict] = field(default_factory=list)
    clips: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """Every field but clips as plain JSON types, in declaration order (accuracy, macro_f1, n first)."""
        return {key: value for key, value in asdict(self).items() if key != "clips"}

    def worst_confusions(self, k: int = 5) -> list[tuple[str, str, int]]:
        """The k most frequent (true label, predicted label, count) mistakes, largest first; ties in label order."""
        pairs = [
            (count, i, j)
            for i, row in enumerate(self.confusion)
            for j, count in enumerate(row)
            if i != j and count > 0
        ]
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        return [(self.labels[i], self.labels[j], count) for count, i, j in pairs[:k]]


def build_report(
    labels: list[str],
    true_ids: Sequence[int],
    probabilities: np.ndarray,
    paths: Sequence[str],
) -> EvalReport:
    """Score predictions: probabilities (n, len(labels)) against true_ids (n,), for the clips at paths (n,).

    The prediction is each row's argmax (the first label on a tie). macro_f1 is scikit-learn's default
    `f1_score(y_true, y_pred, average="macro")`: the unweighted mean F1 over the labels that occur in the true or the
    predicted labels, so a label the data and the model both never mention does not pull it down. per_class still
    lists every label.
    """
    labels = list(labels)
    scores = np.asarray(probabilities, dtype=np.float64)
    y_true = np.asarray(true_ids, dtype=np.int64).reshape(-1)
    n = len(y_true)
    if n == 0:
        raise DataError("no clips to evaluate: the evaluation set is empty")
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ModelError(
            f"model gives scores shaped {scores.shape}; expected (clips, {len(labels)}) for labels {', '.join(labels)}"
        )
    if scores.shape[0] != n or len(paths) != n:
        raise ValueError(
            f"{n} true labels, {scores.shape[0]} score rows and {len(paths)} paths; expected one of each per clip"
        )
    if y_true.min() < 0 or y_true.max() >= len(labels):
        raise ValueError(f"true label ids must lie in 0..{len(labels) - 1}; got {y_true.min()}..{y_true.max()}")
    if not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
        raise ModelError(f"model gave non-finite scores for {paths[bad]}")

    y_pred = scores.argmax(axis=1)
    label_ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=label_ids, zero_division=0
    )
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    # stable sort of the negated scores keeps argmax's first-on-tie choice at the top
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    misclassified = [
        {
            "path": str(paths[i]),
            "label": labels[y_true[i]],
            "predicted": labels[y_pred[i]],
            "top3": [{"label": labels[j], "score": float(scores[i, j])} for j in ranked[i]],
        }
        for i in np.flatnonzero(y_pred != y_true)
    ]
    everything = np.argsort(-scores, axis=1, kind="stable")
    clips = [{"path": str(paths[i]), "label": labels[y_true[i]],
              "predictions": [{"label": labels[j], "score": float(scores[i, j])} for j in everything[i]]}
             for i in range(n)]
    true_scores = scores[np.arange(n), y_true]
    return EvalReport(
        accuracy=float(np.mean(y_pred == y_true)),
        macro_f1=float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        n=n,
        loss=float(-np.log(np.maximum(true_scores, np.finfo(np.float64).tiny)).mean()),
        labels=labels,
        per_class=per_class,
        confusion=confusion_matrix(y_true, y_pred, labels=label_ids).tolist(),
        misclassified=misclassified,
        clips=clips,
    )


def write_report(report: EvalReport, report_dir: Path) -> dict[str, Path]:
    """Write metrics.json (the report but its clips), confusion.png, misclassified.csv and predictions.jsonl (the
    clips) into report_dir.

    Returns {"metrics", "confusion_plot", "misclassified", "predictions"} -> the path written.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    return {
        "metrics": files.write_json(report_dir / METRICS_FILE, report.to_dict()),
        "confusion_plot": plot_confusion(report, report_dir / CONFUSION_PLOT_FILE),
        "misclassified": files.write_text(report_dir / MISCLASSIFIED_FILE, _misclassified_csv(report)),
        "predictions": files.write_text(report_dir / PREDICTIONS_FILE,
                                        "".join(json.dumps(clip) + "\n" for clip in report.clips)),
    }


def plot_confusion(report: EvalReport, path: Path) -> Path:
    """Draw the confusion matrix as a PNG at path: true labels down, predicted across, counts in the cells."""
    figure = _confusion_figure(report)
    path = Path(path)
    with files.AtomicFile(path) as f:
        figure.savefig(f, format="png", dpi=CONFUSION_PLOT_DPI, bbox_inches="tight")
    return path


def format_report(report: EvalReport, worst: int = 5) -> str:
    """A short human summary: accuracy, macro-F1 and n, a per-class table, and the most confused pairs."""
    width = max(len("label"), *(len(label) for label in report.labels))
    lines = [
        f"accuracy {report.accuracy:.4f}   macro-F1 {report.macro_f1:.4f}   n {report.n}",
        "",
        f"{'label':<{width}}  precision  recall      f1  support",
    ]
    for label in report.labels:
        c = report.per_class[label]
        lines.append(f"{label:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:6.3f}  {c['support']:7d}")
    confusions = report.worst_confusions(worst)
    lines.append("")
    if confusions:
        lines.append("most confused (true -> predicted):")
        lines += [f"  {true} -> {predicted}: {count}" for true, predicted, count in confusions]
    else:
        lines.append("no misclassified clips")
    return "\n".join(lines)


def _confusion_figure(report: EvalReport) -> Figure:
    counts = np.asarray(report.confusion, dtype=np.int64)
    n_labels = len(report.labels)
    side_inches = max(4.0, 0.55 * n_labels + 2.0)  # ~0.55 inch per cell keeps 3-digit counts legible at 14 labels
    figure = Figure(figsize=(side_inches + 1.0, side_inches))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n_labels)
    ax.set_xticks(ticks, labels=report.labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=report.labels)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(f"confusion matrix (n={report.n}, accuracy {report.accuracy:.3f})")
    font_size = 10 if n_labels <= 8 else 8
    dark = counts.max() / 2 if counts.size else 0
    for i in range(n_labels):
        for j in range(n_labels):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font_size,
                    color="white" if counts[i, j] > dark else "black")
    figure.tight_layout()
    return figure


def _misclassified_csv(report: EvalReport) -> str:
    ranks = range(1, TOP_K + 1)
    columns = ["path", "label", "predicted"] + [f"top{r}_{part}" for r in ranks for part in ("label", "score")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in report.misclassified:
        flat = {"path": row["path"], "label": row["label"], "predicted": row["predicted"]}
        for rank, alternative in enumerate(row["top3"], start=1):
            flat[f"top{rank}_label"] = alternative["label"]
            flat[f"top{rank}_score"] = repr(alternative["score"])
        writer.writerow(flat)
    return buffer.getvalue()


def evaluate_clips(classifier, clips, dataset, progress: bool = True, chunk: int = 64) -> EvalReport:
    """Score `classifier` (an infer.Classifier) on one split of a ClipSet: each clip as `Classifier.score_clips`
    scores it (long clips in windows, their probabilities averaged), then `build_report`.

    The model's label set decides: a clip whose label the model does not know is a DataError naming them.
    Clips are decoded a chunk at a time, never all at once. The report lists the clips the source's scan left out.
    """
    from tqdm import tqdm

    from audioclf.data import clip_samples

    model_ids = {label: i for i, label in enumerate(classifier.labels)}
    rows = dataset.with_format(None).select_columns(["audio", "label"])
    data_labels = [clips.labels[i] for i in sorted(set(rows["label"]))]
    unknown = [label for label in data_labels if label not in model_ids]
    if unknown:
        raise DataError(
            f"{clips.source}: label(s) {', '.join(unknown)} are not known to the model; it knows: {', '.join(classifier.labels)}"
        )
    true_ids, paths, parts = [], [], []
    bar = tqdm(total=len(rows), desc="evaluating", unit="clip", disable=not progress)
    for start in range(0, len(rows), chunk):
        batch = rows[start : start + chunk]
        samples = [clip_samples(audio, classifier.sampling_rate) for audio in batch["audio"]]
        parts += [scores.probabilities for scores in classifier.score_clips(samples)]
        true_ids += [model_ids[clips.labels[i]] for i in batch["label"]]
        paths += [audio.get("path") or f"row {start + k}" for k, audio in enumerate(batch["audio"])]
        bar.update(len(samples))
    bar.close()
    report = build_report(classifier.labels, true_ids, np.stack(parts) if parts else np.zeros((0, len(model_ids))), paths)
    return replace(report, problems=[asdict(problem) for problem in clips.problems])


def evaluate_model(model_dir: str | Path, spec, split: str | None = None, progress: bool = True,
                   update_card: bool = False, **classifier_options) -> EvalReport:
    """Load the model in `model_dir` (infer.load_classifier, with `classifier_options`) and score it on the clips
    `evaluation_clips` picks from `spec` (a DataSpec). With `update_card`, the report is also kept in the model
    directory's metrics.json as its latest evaluation and its model card shows it (audioclf.card)."""
    from audioclf.infer import load_classifier

    if update_card and not (Path(model_dir) / METRICS_FILE).is_file():
        raise ConfigError(f"--update-card: {model_dir} is not a model directory audioclf trained (it has no "
                          f"{METRICS_FILE}), so it has no card to update")
    if update_card:  # before the work, as every output is checked
        files.check_writable_output(model_dir, "--update-card", "into",
                                    inside=(METRICS_FILE, CARD_FILE, CONFUSION_PLOT_FILE))
    classifier = load_classifier(model_dir, **classifier_options)
    clips, dataset, split = evaluation_clips(model_dir, spec, split, progress)
    report = evaluate_clips(classifier, clips, dataset, progress=progress)
    if update_card:
        from audioclf import card

        card.record_evaluation(model_dir, report, clips.source, split)
    return report


def evaluation_clips(model_dir: str | Path, spec, split: str | None = None, progress: bool = True):
    """The clips of `spec` (a DataSpec) to evaluate the model in `model_dir` on: `split` of the source, or "all";
    by default the source's test split when it brings one, the training run's own held-out test clips when this is
    the data the model was trained on, else every clip. Returns (the ClipSet, the clips, the split's name)."""
    from datasets import concatenate_datasets

    from audioclf.data import load_clips

    trained_on = _training_data_spec(Path(model_dir), spec)
    clips = load_clips(trained_on or spec, split=True, progress=progress)
    if split is None:
        split = "test" if not clips.derived_split or trained_on is not None else "all"
    if split == "all":
        return clips, concatenate_datasets(list(clips.splits.values())), split
    if split not in clips.splits:
        raise ConfigError(f"--split {split!r}: {clips.source} has the splits {', '.join(clips.splits)} (or 'all')")
    return clips, clips.splits[split], split


def _training_data_spec(model_dir: Path, spec):
    """The data options the model was trained with, when it was trained on this same source and no
    split-changing option was given now, so its test split can be made again exactly."""
    import dataclasses

    from audioclf.config import DataSpec

    config_file = model_dir / TRAIN_CONFIG_FILE
    if not config_file.is_file():
        return None
    try:
        trained = DataSpec(**json.loads(config_file.read_text())["data"])
    except (ValueError, KeyError, TypeError):
        return None
    if Path(trained.data).resolve() != Path(spec.data).resolve():
        return None
    given = {f.name: getattr(spec, f.name) for f in dataclasses.fields(DataSpec)}
    defaults = {f.name: f.default for f in dataclasses.fields(DataSpec) if f.name != "data"}
    changed = {k: v for k, v in given.items() if k != "data" and v != defaults[k]}
    return dataclasses.replace(trained, **changed)
