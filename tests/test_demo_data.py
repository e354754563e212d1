"""The shipped demo dataset (src/audioclf/demo_data/minds14_synth) is complete and well-formed.

Checks the files as shipped; nothing is regenerated (that needs espeak-ng, see scripts/make_demo_data.py).
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import pytest
import soundfile as sf

import audioclf

INTENTS = [
    "abroad",
    "address",
    "app_error",
    "atm_limit",
    "balance",
    "business_loan",
    "card_issues",
    "cash_deposit",
    "direct_debit",
    "freeze",
    "high_value_payment",
    "joint_account",
    "latest_transactions",
    "pay_bill",
]
VOICE_COUNT = 8
MIN_TEXTS_PER_LABEL = 10
DECODE_SAMPLE_SIZE = 20
SAMPLING_RATE_HZ = 8_000
MIN_DURATION_SECONDS = 0.5
MAX_DURATION_SECONDS = 8.0
MAX_FOLDER_BYTES = 15_000_000  # the package's budget for bundled demo data

# __file__ is None while audioclf is a namespace package (no __init__.py); __path__ works either way.
PACKAGE_DIR = Path(audioclf.__file__).parent if audioclf.__file__ else Path(next(iter(audioclf.__path__)))
DATASET_DIR = PACKAGE_DIR / "demo_data" / "minds14_synth"
MANIFEST_PATH = DATASET_DIR / "manifest.csv"


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    assert MANIFEST_PATH.is_file(), f"missing {MANIFEST_PATH}; run scripts/make_demo_data.py"
    with open(MANIFEST_PATH, newline="", encoding="utf-8") as manifest:
        reader = csv.DictReader(manifest)
        assert reader.fieldnames == ["path", "label", "voice", "text"]
        return list(reader)


def test_labels_are_exactly_the_14_minds14_intents(rows):
    assert sorted({row["label"] for row in rows}) == INTENTS


def test_each_label_has_varied_phrasings(rows):
    texts = defaultdict(set)
    for row in rows:
        texts[row["label"]].add(row["text"])
    for label in INTENTS:
        assert len(texts[label]) >= MIN_TEXTS_PER_LABEL, f"{label}: only {len(texts[label])} distinct texts"


def test_every_voice_speaks_every_label(rows):
    labels_by_voice = defaultdict(set)
    for row in rows:
        labels_by_voice[row["voice"]].add(row["label"])
    assert len(labels_by_voice) == VOICE_COUNT
    for voice, labels in labels_by_voice.items():
        assert sorted(labels) == INTENTS, f"voice {voice} lacks {sorted(set(INTENTS) - labels)}"


def test_manifest_paths_are_relative_unique_and_exist(rows):
    paths = [row["path"] for row in rows]
    assert len(set(paths)) == len(paths)
    for path in paths:
        assert not Path(path).is_absolute()
        assert (DATASET_DIR / path).is_file(), f"missing {path}"


def test_sampled_clips_decode_as_8khz_mono_flac(rows):
    # A fixed-seed sample: the same files every run, and a fast test.
    sample = random.Random(0).sample(rows, min(DECODE_SAMPLE_SIZE, len(rows)))
    for row in sample:
        path = DATASET_DIR / row["path"]
        info = sf.info(path)
        assert info.format == "FLAC"
        assert info.subtype == "PCM_16"
        samples, sampling_rate = sf.read(path)
        assert sampling_rate == SAMPLING_RATE_HZ
        assert samples.ndim == 1, f"{row['path']} is not mono"
        duration_seconds = len(samples) / sampling_rate
        in_range = MIN_DURATION_SECONDS < duration_seconds < MAX_DURATION_SECONDS
        assert in_range, f"{row['path']}: {duration_seconds:.2f} s"


def test_folder_fits_the_size_budget():
    total_bytes = sum(path.stat().st_size for path in DATASET_DIR.rglob("*") if path.is_file())
    assert total_bytes <= MAX_FOLDER_BYTES, f"{total_bytes / 1e6:.1f} MB"
