"""evaluate.py: every number matches scikit-learn computed here independently, and the written report reads back."""

from __future__ import annotations

import csv
import json
import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score, log_loss

from audioclf.errors import DataError, ModelError
from audioclf.evaluate import _confusion_figure, build_report, format_report, plot_confusion, write_report

LABELS = ["dog", "cat", "bird", "rain", "siren"]


def _random_predictions(n: int = 80, n_labels: int = 5, true_labels: int = 4, seed: int = 0):
    """Seeded true ids drawn from the first `true_labels` labels and random softmax scores over all of them."""
    rng = np.random.default_rng(seed)
    true_ids = rng.integers(0, true_labels, n)
    logits = rng.normal(size=(n, n_labels))
    logits[np.arange(n), true_ids] += 1.0  # better than chance, still plenty of mistakes
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    paths = [f"clips/{i:03d}.wav" for i in range(n)]
    return true_ids, probabilities, paths


# sklearn warns that recall is undefined for a label with no true clips; that is the case under test
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_every_number_matches_sklearn():
    true_ids, probabilities, paths = _random_predictions()
    y_pred = probabilities.argmax(axis=1)
    assert 0 < (y_pred == true_ids).mean() < 1
    assert 4 not in true_ids and 4 in y_pred  # "siren" is predicted but never true

    report = build_report(LABELS, true_ids, probabilities, paths)

    assert report.n == 80 and report.labels == LABELS
    assert report.accuracy == accuracy_score(true_ids, y_pred)
    assert report.macro_f1 == f1_score(true_ids, y_pred, average="macro")
    expected = classification_report(true_ids, y_pred, labels=range(5), target_names=LABELS, output_dict=True)
    for label in LABELS:
        for key, value in report.per_class[label].items():
            assert value == expected[label]["f1-score" if key == "f1" else key], (label, key)
    assert report.per_class["siren"]["support"] == 0
    assert report.confusion == confusion_matrix(true_ids, y_pred, labels=range(5)).tolist()
    assert report.loss == pytest.approx(log_loss(true_ids, probabilities, labels=range(5)), rel=1e-9)


def test_macro_f1_skips_labels_neither_true_nor_predicted_but_per_class_lists_them():
    true_ids, probabilities, paths = _random_predictions(n_labels=5, true_labels=5, seed=1)
    probabilities = np.hstack([probabilities, np.zeros((len(paths), 1))])  # a sixth label nobody says
    labels = LABELS + ["thunder"]
    y_pred = probabilities.argmax(axis=1)

    report = build_report(labels, true_ids, probabilities, paths)

    assert report.macro_f1 == f1_score(true_ids, y_pred, average="macro")
    assert report.macro_f1 != f1_score(true_ids, y_pred, average="macro", labels=range(6), zero_division=0)
    assert report.per_class["thunder"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert [row[5] for row in report.confusion] == [0] * 6 and report.confusion[5] == [0] * 6


def test_misclassified_lists_exactly_the_wrong_clips_with_sorted_top3():
    true_ids, probabilities, paths = _random_predictions(seed=2)
    y_pred = probabilities.argmax(axis=1)

    report = build_report(LABELS, true_ids, probabilities, paths)

    wrong = np.flatnonzero(y_pred != true_ids)
    assert [m["path"] for m in report.misclassified] == [paths[i] for i in wrong]
    for i, row in zip(wrong, report.misclassified):
        assert row["label"] == LABELS[true_ids[i]] and row["predicted"] == LABELS[y_pred[i]]
        scores = [alt["score"] for alt in row["top3"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert row["top3"][0]["label"] == row["predicted"]
        assert scores == sorted(probabilities[i], reverse=True)[:3]
        assert all(alt["score"] == probabilities[i][LABELS.index(alt["label"])] for alt in row["top3"])


def test_top3_is_shorter_with_two_labels_and_ties_go_to_the_first_label():
    report = build_report(["yes", "no"], [1, 0], np.array([[0.5, 0.5], [0.2, 0.8]]), ["a.wav", "b.wav"])

    assert report.accuracy == 0.0
    assert report.misclassified == [
        {"path": "a.wav", "label": "no", "predicted": "yes", "top3": [{"label": "yes", "score": 0.5}, {"label": "no", "score": 0.5}]},
        {"path": "b.wav", "label": "yes", "predicted": "no", "top3": [{"label": "no", "score": 0.8}, {"label": "yes", "score": 0.2}]},
    ]


def _report_from_pairs(labels, pairs):
    """A report whose clips have exactly these (true id, predicted id) pairs."""
    true_ids = [t for t, _ in pairs]
    probabilities = np.full((len(pairs), len(labels)), 0.1)
    probabilities[np.arange(len(pairs)), [p for _, p in pairs]] = 0.9
    return build_report(labels, true_ids, probabilities, [f"{i}.wav" for i in range(len(pairs))])


def test_worst_confusions_are_the_largest_off_diagonal_counts():
    a, b, c = 0, 1, 2
    pairs = [(a, b)] * 3 + [(c, a)] * 2 + [(b, c)] + [(b, a)] + [(a, a)] * 9 + [(c, c)] * 4
    report = _report_from_pairs(["a", "b", "c"], pairs)

    assert report.worst_confusions(2) == [("a", "b", 3), ("c", "a", 2)]
    assert report.worst_confusions() == [("a", "b", 3), ("c", "a", 2), ("b", "a", 1), ("b", "c", 1)]
    assert _report_from_pairs(["a", "b"], [(0, 0), (1, 1)]).worst_confusions() == []


def test_worst_confusions_match_the_confusion_matrix_on_random_predictions():
    true_ids, probabilities, paths = _random_predictions(seed=3)
    matrix = confusion_matrix(true_ids, probabilities.argmax(axis=1), labels=range(5))
    off_diagonal = sorted((int(matrix[i, j]) for i in range(5) for j in range(5) if i != j and matrix[i, j]), reverse=True)

    worst = build_report(LABELS, true_ids, probabilities, paths).worst_confusions(k=7)

    assert [count for _, _, count in worst] == off_diagonal[:7]
    assert all(matrix[LABELS.index(t), LABELS.index(p)] == count for t, p, count in worst)


def test_to_dict_is_json_ready():
    report = build_report(LABELS, *_random_predictions(seed=4))

    data = report.to_dict()

    assert list(data)[:3] == ["accuracy", "macro_f1", "n"]
    assert json.loads(json.dumps(data)) == data
    assert data["per_class"] == report.per_class and data["misclassified"] == report.misclassified


def test_write_report_writes_files_that_read_back(tmp_path):
    true_ids, probabilities, paths = _random_predictions(seed=5)
    report = build_report(LABELS, true_ids, probabilities, paths)

    written = write_report(report, tmp_path / "report")

    assert set(written) == {"metrics", "confusion_plot", "misclassified", "predictions"}
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["confusion.png", "metrics.json",
                                                                       "misclassified.csv", "predictions.jsonl"]
    assert json.loads(written["metrics"].read_text()) == report.to_dict()
    clips = [json.loads(line) for line in written["predictions"].read_text().splitlines()]
    assert [(c["path"], c["label"]) for c in clips] == [(p, LABELS[t]) for p, t in zip(paths, true_ids)]
    for clip, row in zip(clips, probabilities):
        assert [p["label"] for p in clip["predictions"]] == [LABELS[j] for j in np.argsort(-row, kind="stable")]
        np.testing.assert_array_equal(sorted(p["score"] for p in clip["predictions"]), np.sort(row))

    image = imread(written["confusion_plot"])
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # cells, labels and counts, not a blank canvas

    with written["misclassified"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(report.misclassified) > 0
    for row, expected in zip(rows, report.misclassified):
        assert (row["path"], row["label"], row["predicted"]) == (expected["path"], expected["label"], expected["predicted"])
        for rank, alternative in enumerate(expected["top3"], start=1):
            assert row[f"top{rank}_label"] == alternative["label"]
            assert float(row[f"top{rank}_score"]) == alternative["score"]


def test_write_report_replaces_an_earlier_report(tmp_path):
    first = _report_from_pairs(["a", "b"], [(0, 1), (1, 1)])
    second = _report_from_pairs(["a", "b"], [(0, 0), (1, 1)])
    write_report(first, tmp_path)

    written = write_report(second, tmp_path)

    assert json.loads(written["metrics"].read_text())["accuracy"] == 1.0
    assert written["misclassified"].read_text().splitlines()[1:] == []
    assert len(list(tmp_path.iterdir())) == 4  # no temporary files left behind


def test_confusion_plot_names_every_label_and_count_for_14_labels(tmp_path):
    labels = [f"label_{i:02d}_long_name" for i in range(14)]
    rng = np.random.default_rng(6)
    true_ids = rng.integers(0, 14, 300)
    report = build_report(labels, true_ids, rng.random((300, 14)), [f"{i}.wav" for i in range(300)])

    figure = _confusion_figure(report)
    ax = figure.axes[0]

    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())
    cell_texts = sorted(t.get_text() for t in ax.texts)
    assert cell_texts == sorted(str(c) for row in report.confusion for c in row)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted label", "true label")

    small = imread(plot_confusion(_report_from_pairs(["a", "b", "c"], [(0, 0), (1, 2)]), tmp_path / "small.png"))
    large = imread(plot_confusion(report, tmp_path / "large.png"))
    assert large.shape[0] > small.shape[0] and large.shape[1] > small.shape[1]


def test_format_report_summarises():
    report = _report_from_pairs(["dog", "cat", "thunderstorm"], [(0, 1)] * 2 + [(0, 0)] * 5 + [(2, 2)] * 3)

    text = format_report(report)

    assert text.splitlines()[0] == "accuracy 0.8000   macro-F1 " + f"{report.macro_f1:.4f}" + "   n 10"
    row = next(line for line in text.splitlines() if line.startswith("dog "))
    assert row.split() == ["dog", "1.000", "0.714", "0.833", "7"]
    assert next(line for line in text.splitlines() if line.startswith("cat ")).split()[-1] == "0"
    assert "thunderstorm" in text
    assert "  dog -> cat: 2" in text.splitlines()
    assert "no misclassified clips" in format_report(_report_from_pairs(["a", "b"], [(0, 0), (1, 1)]))


def test_bad_inputs_are_refused():
    true_ids, probabilities, paths = _random_predictions(n=6)

    with pytest.raises(DataError, match="empty"):
        build_report(LABELS, [], np.zeros((0, 5)), [])
    with pytest.raises(ModelError, match=r"expected \(clips, 4\)"):
        build_report(LABELS[:4], true_ids, probabilities, paths)
    with pytest.raises(ValueError, match="paths"):
        build_report(LABELS, true_ids, probabilities, paths[:-1])
    with pytest.raises(ValueError, match="0..4"):
        build_report(LABELS, [0, 1, 2, 3, 4, 5], probabilities, paths)
    probabilities[3, 2] = np.nan
    with pytest.raises(ModelError, match="clips/003.wav"):
        build_report(LABELS, true_ids, probabilities, paths)
