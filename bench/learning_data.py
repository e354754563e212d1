"""Subsampled training sets with a fixed test set, for learning curves: k clips per label in training, the test
clips the same for every k (whole voices never heard in training)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from audioclf.testing import write_manifest

TEST_SHARE = 0.25  # of the voices, held out for testing, as `audioclf demo` does
TEST_SEED = 0  # the test voices are the same for every size and seed, so every row is scored on the same clips


def read_rows(manifest: Path) -> list[dict]:
    """The manifest's rows, each path made absolute, so a subsample's manifest can live anywhere."""
    with Path(manifest).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{**row, "path": str((Path(manifest).parent / row["path"]).resolve())} for row in rows]


def subsample(rows: list[dict], clips_per_label: int | None, folder: Path, seed: int, group: str = "voice") -> Path:
    """A manifest with a `split` column: the test voices (TEST_SHARE of them, the same whatever the seed) and, drawn
    by `seed` from the other voices, `clips_per_label` training clips of every label (None: all of them)."""
    voices = sorted({row[group] for row in rows})
    test_voices = set(np.random.default_rng(TEST_SEED).choice(voices, size=int(round(TEST_SHARE * len(voices))),
                                                              replace=False))
    rng = np.random.default_rng(seed)
    test = [{**row, "split": "test"} for row in rows if row[group] in test_voices]
    train = []
    for label in sorted({row["label"] for row in rows}):
        pool = [row for row in rows if row["label"] == label and row[group] not in test_voices]
        chosen = pool if clips_per_label is None else [pool[i] for i in rng.permutation(len(pool))[:clips_per_label]]
        train += [{**row, "split": "train"} for row in chosen]
    folder.mkdir(parents=True, exist_ok=True)
    return write_manifest(folder / "manifest.csv", train + test)
