"""The shipped demo dataset (src/audioclf/demo_data/minds14_synth) is complete and well-formed.

Checks the files as shipped; nothing is regenerated (that needs espeak-ng, see scripts/make_demo_data.py).
"""

from __future__ import annotations

import csv
import random
import re
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
VOICE_COUNT = 128
CLIPS_PER_VOICE = 7  # one clip each for 7 different labels
CLIP_COUNT = VOICE_COUNT * CLIPS_PER_VOICE  # 896
CLIPS_PER_LABEL = CLIP_COUNT // len(INTENTS)  # 64, each from a different voice
MIN_TEXTS_PER_LABEL = 10
DECODE_SAMPLE_SIZE = 20
SAMPLING_RATE_HZ = 8_000
SIGNIFICANT_BITS = 10  # 16-bit samples rounded to multiples of 2**6: how 896 clips fit the budget
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


def test_clip_count(rows):
    assert len(rows) == CLIP_COUNT


def test_labels_are_exactly_the_14_minds14_intents(rows):
    assert sorted({row["label"] for row in rows}) == INTENTS


def test_each_label_has_varied_phrasings(rows):
    texts = defaultdict(set)
    for row in rows:
        texts[row["label"]].add(row["text"])
    for label in INTENTS:
        assert len(texts[label]) >= MIN_TEXTS_PER_LABEL, f"{label}: only {len(texts[label])} distinct texts"


def test_voice_ids_are_zero_padded_and_complete(rows):
    # Zero-padded ids (v001, v002, ...), so that they sort in numeric order.
    assert sorted({row["voice"] for row in rows}) == [f"v{number:03d}" for number in range(1, VOICE_COUNT + 1)]


def test_each_voice_says_7_distinct_labels_once_each(rows):
    labels_by_voice = defaultdict(list)
    for row in rows:
        labels_by_voice[row["voice"]].append(row["label"])
    for voice, labels in labels_by_voice.items():
        assert len(labels) == CLIPS_PER_VOICE, f"voice {voice}: {len(labels)} clips"
        assert len(set(labels)) == CLIPS_PER_VOICE, f"voice {voice} repeats a label: {sorted(labels)}"


def test_each_label_has_64_clips_from_64_different_voices(rows):
    voices_by_label = defaultdict(list)
    for row in rows:
        voices_by_label[row["label"]].append(row["voice"])
    for label in INTENTS:
        voices = voices_by_label[label]
        assert len(voices) == CLIPS_PER_LABEL, f"{label}: {len(voices)} clips"
        assert len(set(voices)) == CLIPS_PER_LABEL, f"{label}: only {len(set(voices))} distinct voices"


def test_clip_paths_follow_the_layout(rows):
    for row in rows:
        match = re.fullmatch(r"clips/(v\d{3})/([a-z_]+)\.flac", row["path"])
        assert match, row["path"]
        assert match.group(1) == row["voice"] and match.group(2) == row["label"], row["path"]


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
        samples, sampling_rate = sf.read(path, dtype="int16")
        assert sampling_rate == SAMPLING_RATE_HZ
        assert not (samples % 2 ** (16 - SIGNIFICANT_BITS)).any(), f"{row['path']}: more than {SIGNIFICANT_BITS} bits"
        assert len(set(samples.tolist())) > 50, f"{row['path']}: hardly any distinct levels"
        assert samples.ndim == 1, f"{row['path']} is not mono"
        duration_seconds = len(samples) / sampling_rate
        in_range = MIN_DURATION_SECONDS < duration_seconds < MAX_DURATION_SECONDS
        assert in_range, f"{row['path']}: {duration_seconds:.2f} s"


def test_folder_holds_only_the_manifest_readme_and_listed_clips(rows):
    listed = {row["path"] for row in rows} | {"manifest.csv", "README.md"}
    on_disk = {path.relative_to(DATASET_DIR).as_posix() for path in DATASET_DIR.rglob("*") if path.is_file()}
    assert on_disk == listed, f"unlisted: {sorted(on_disk - listed)[:5]}, missing: {sorted(listed - on_disk)[:5]}"


def test_folder_fits_the_size_budget():
    total_bytes = sum(path.stat().st_size for path in DATASET_DIR.rglob("*") if path.is_file())
    assert total_bytes <= MAX_FOLDER_BYTES, f"{total_bytes / 1e6:.1f} MB"
