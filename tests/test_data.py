import csv
import functools
import io
import itertools
import json
import socket
import tracemalloc
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from audioclf import data, files
from audioclf.audio import load_audio
from audioclf.data import DataSpec, clip_samples, inspect_clips, load_clips, split_dataset
from audioclf.errors import AudioLoadError, ColumnError, ConfigError, DataError
from audioclf.testing import TONE_CLASSES, class_clip, make_folder_dataset, make_manifest_dataset, write_clip

LABELS = ("low", "high", "noise")
SECONDS = 0.2
RATE = 8000
COLUMNS = ["audio", "label", "duration_seconds", "sampling_rate", "channels"]


def load(source, **kwargs) -> data.ClipSet:
    split = kwargs.pop("split", True)
    return load_clips(DataSpec(str(source), **kwargs), split=split, progress=False)


def n_rows(clips: data.ClipSet) -> int:
    return sum(len(ds) for ds in clips.splits.values())


def label_counts(clips: data.ClipSet) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ds in clips.splits.values():
        for i in ds["label"]:
            counts[clips.labels[i]] = counts.get(clips.labels[i], 0) + 1
    return counts


def wav_bytes(label: str, seed: int, seconds: float = SECONDS) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, class_clip(label if label in TONE_CLASSES else "noise", seconds, RATE, seed), RATE, format="WAV")
    return buffer.getvalue()


def hf_dataset(label_kind: str = "classlabel", per_label: int = 5, labels=LABELS, first: int = 0) -> datasets.Dataset:
    """Clips as bytes in an Audio column, like Hub datasets hold them; label column 'intent'. Clip `first + i` of a
    label is the same audio in every dataset made here."""
    audio, intents, speakers = [], [], []
    for li, label in enumerate(labels):
        for i in range(first, first + per_label):
            audio.append({"bytes": wav_bytes(label, li * 100 + i), "path": f"{label}_{i}.wav"})
            intents.append({"classlabel": li, "string": label, "int": int(label) if label.isdigit() else li}[label_kind])
            speakers.append(f"s{i % 3}")
    intent_feature = {
        "classlabel": datasets.ClassLabel(names=list(labels)),
        "string": datasets.Value("string"),
        "int": datasets.Value("int64"),
    }[label_kind]
    features = datasets.Features(
        {
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "intent": intent_feature,
            "speaker": datasets.Value("string"),
        }
    )
    # built as a plain struct, then cast: Audio's own encoder would need torchcodec
    return datasets.Dataset.from_dict({"audio": audio, "intent": intents, "speaker": speakers}, features=features).cast_column(
        "audio", datasets.Audio()
    )


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder_dataset(tmp_path / "folder", labels=LABELS, clips_per_label=5, seconds=SECONDS, sampling_rate=RATE)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep the parquet builder's cache inside the test."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


# --- sources ----------------------------------------------------------------------------------------------------


def test_folder_source_finds_clips_at_any_depth_and_ignores_the_rest(folder):
    write_clip(folder / "low" / "speaker9" / "deep.flac", class_clip("low", SECONDS, RATE, 7), RATE)
    stereo = np.stack([class_clip("high", SECONDS, RATE, 8)] * 2, axis=1)
    write_clip(folder / "high" / "stereo.wav", stereo, RATE)
    write_clip(folder / "low" / ".hidden.wav", class_clip("low", SECONDS, RATE, 9), RATE)
    write_clip(folder / ".cache" / "x.wav", class_clip("low", SECONDS, RATE, 9), RATE)
    (folder / "noise" / "notes.txt").write_text("not audio")

    clips = load(folder)

    assert clips.labels == ["high", "low", "noise"]
    assert label_counts(clips) == {"high": 6, "low": 6, "noise": 5}
    assert clips.problems == []
    assert clips.source == str(folder.resolve())
    rows = [row for ds in clips.splits.values() for row in ds]
    assert all(ds.column_names == COLUMNS for ds in clips.splits.values())
    assert all(Path(row["audio"]["path"]).is_absolute() and row["audio"]["bytes"] is None for row in rows)
    assert [row["duration_seconds"] for row in rows] == pytest.approx([SECONDS] * len(rows))
    assert {row["sampling_rate"] for row in rows} == {RATE}
    by_name = {Path(row["audio"]["path"]).name: row for row in rows}
    assert by_name["stereo.wav"]["channels"] == 2 and by_name["stereo.wav"]["label"] == clips.label2id["high"]
    assert by_name["deep.flac"]["label"] == clips.label2id["low"]
    feature = clips.splits["train"].features
    assert feature["audio"] == datasets.Audio(decode=False)
    assert feature["label"].names == clips.labels


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_source_resolves_paths_and_keeps_extra_columns(tmp_path, kind):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=5, seconds=SECONDS, kind=kind)

    clips = load(manifest)

    assert clips.labels == ["high", "low", "noise"]
    assert label_counts(clips) == {"high": 5, "low": 5, "noise": 5}
    assert set(clips.splits) == {"train", "test"}
    ds = clips.splits["train"]
    assert ds.column_names == COLUMNS + ["speaker"]
    row = ds[0]
    assert Path(row["audio"]["path"]).parent == (tmp_path / "m" / "clips").resolve()
    assert row["speaker"].startswith("spk")
    assert clips.source == str(manifest.resolve())


def test_manifest_absolute_paths_other_columns_and_int_labels(tmp_path):
    rows = []
    for label in (10, 2, 1):
        for i in range(3):
            path = write_clip(tmp_path / "elsewhere" / f"{label}_{i}.wav", class_clip("noise", SECONDS, RATE, label * 10 + i), RATE)
            rows.append({"file": str(path), "class": label, "note": "x"})
    manifest = tmp_path / "sub" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    clips = load(manifest, audio_column="file", label_column="class", split=False)

    assert clips.labels == ["1", "2", "10"]  # integer labels sort by value
    assert label_counts(clips) == {"1": 3, "2": 3, "10": 3}
    assert clips.splits["all"].column_names == COLUMNS + ["note"]


def test_manifest_split_column_is_reused(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=6, seconds=SECONDS, with_split=True)

    clips = load(manifest, group_column="speaker")

    # make_manifest_dataset puts clip i in test when i % 3 == 0: 2 of 6 per label
    assert list(clips.splits) == ["train", "test"]
    assert len(clips.splits["train"]) == 12 and len(clips.splits["test"]) == 6
    assert set(clips.splits["test"]["split"]) == {"test"}
    assert set(clips.splits["test"]["speaker"]) == {"spk0"}

    only_test = load(manifest, data_split="test")
    assert {name: len(ds) for name, ds in only_test.splits.items()} == {"train": 3, "test": 3}


def test_manifest_unknown_split_value_names_the_allowed_ones(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=2, seconds=SECONDS, with_split=True)
    text = manifest.read_text().replace(",train", ",training", 1)
    manifest.write_text(text)

    with pytest.raises(DataError, match=r"'training' is not one of train, validation, test"):
        load(manifest)


def test_save_to_disk_dataset_with_classlabel(tmp_path):
    ds = hf_dataset("classlabel", labels=("noise", "low", "high"))  # ClassLabel names not in sorted order
    ds.save_to_disk(str(tmp_path / "saved"))
    files_before = sorted((tmp_path / "saved").iterdir())

    clips = load(tmp_path / "saved", label_column="intent")

    assert clips.labels == ["high", "low", "noise"]
    assert label_counts(clips) == {"high": 5, "low": 5, "noise": 5}
    for ds_split in clips.splits.values():
        assert ds_split.column_names == COLUMNS + ["speaker"]
        for row in ds_split:  # the label follows the names, not the old integer
            assert row["audio"]["path"].startswith(clips.labels[row["label"]])
            assert row["audio"]["bytes"][:4] == b"RIFF"
    assert sorted((tmp_path / "saved").iterdir()) == files_before  # no cache files written into the user's folder


def test_save_to_disk_dataset_dict_keeps_its_splits(tmp_path):
    train, held_out, valid = (hf_dataset("string", per_label=n, first=first) for n, first in ((4, 0), (2, 4), (2, 6)))
    datasets.DatasetDict({"test": held_out, "train": train, "valid": valid}).save_to_disk(str(tmp_path / "saved"))

    clips = load(tmp_path / "saved", label_column="intent")

    assert list(clips.splits) == ["train", "validation", "test"]  # "valid" is the usual alias
    assert [len(d) for d in clips.splits.values()] == [12, 6, 6]
    assert clips.labels == ["high", "low", "noise"]

    picked = load(tmp_path / "saved", label_column="intent", data_split="train")  # one split: split again
    assert list(picked.splits) == ["train", "test"] and n_rows(picked) == 12
    with pytest.raises(DataError, match="its splits: test, train, valid"):
        load(tmp_path / "saved", label_column="intent", data_split="dev")


def test_parquet_file_folder_and_glob(tmp_path, hf_cache):
    ds = hf_dataset("int", labels=("10", "2", "1"), per_label=4)
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))

    for source in (tmp_path / "pq" / "train-00000.parquet", tmp_path / "pq", f"{tmp_path}/pq/*.parquet"):
        clips = load(source, label_column="intent")
        assert clips.labels == ["1", "2", "10"], source
        assert label_counts(clips) == {"1": 4, "2": 4, "10": 4}, source
        assert clips.splits["train"].column_names == COLUMNS + ["speaker"]
        assert clips.splits["train"].features["audio"] == datasets.Audio(decode=False)


def test_string_path_column_in_a_saved_dataset_is_relative_to_it(tmp_path):
    paths = []
    for li, label in enumerate(("a", "b")):
        for i in range(3):
            write_clip(tmp_path / "saved_paths" / "clips" / f"{label}{i}.wav", class_clip("noise", SECONDS, RATE, 10 * li + i),
                       RATE)
            paths.append(f"clips/{label}{i}.wav")
    ds = datasets.Dataset.from_dict({"file": paths, "label": [p[6] for p in paths]})
    ds.save_to_disk(str(tmp_path / "saved_paths"))

    clips = load(tmp_path / "saved_paths", audio_column="file", split=False)

    assert clips.problems == []
    assert clips.labels == ["a", "b"]
    assert clips.splits["all"][0]["audio"]["path"] == str((tmp_path / "saved_paths" / "clips" / "a0.wav").resolve())


def test_audio_values_decode_through_clip_samples(folder, tmp_path):
    row = load(folder, split=False).splits["all"][0]
    path = row["audio"]["path"]
    assert np.array_equal(clip_samples(row["audio"], RATE), sf.read(path, dtype="float32")[0])
    assert clip_samples(row["audio"], 16000).shape == (int(SECONDS * 16000),)

    hf_dataset("string").save_to_disk(str(tmp_path / "saved"))
    row = load(tmp_path / "saved", label_column="intent", split=False).splits["all"][0]
    expected = load_audio(row["audio"]["bytes"], 16000)
    assert np.array_equal(clip_samples(row["audio"], 16000), expected)
    assert expected.shape == (int(SECONDS * 16000),)


# --- bad input --------------------------------------------------------------------------------------------------


def test_wrong_column_names_list_the_columns(folder, tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=2, seconds=SECONDS)
    with pytest.raises(ColumnError, match=r"--label-column 'intent' .*available columns: path, label, speaker") as e:
        load(manifest, label_column="intent")
    assert e.value.available == ["path", "label", "speaker"]
    with pytest.raises(ColumnError, match=r"--audio-column 'audio' .*available columns: path, label, speaker"):
        load(manifest, audio_column="audio")
    with pytest.raises(ColumnError, match=r"--group-column 'speaker' .*available columns: audio, label"):
        load(folder, group_column="speaker")
    hf_dataset().save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ColumnError, match=r"--label-column 'label' .*available columns: audio, intent, speaker"):
        load(tmp_path / "saved")


def test_missing_and_empty_sources(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no such file or folder"):
        load(tmp_path / "nowhere" / "data")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data.csv: no such file or folder"):  # not taken for a Hub id
        load("data.csv")
    (tmp_path / "empty" / "low").mkdir(parents=True)
    (tmp_path / "empty" / "low" / "readme.txt").write_text("no audio here")
    with pytest.raises(DataError, match="no audio clips found"):
        load(tmp_path / "empty")
    (tmp_path / "m.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="has no rows"):
        load(tmp_path / "m.csv")
    with pytest.raises(DataError, match="not a data source"):
        load(write_clip(tmp_path / "one.wav", class_clip("low", SECONDS, RATE), RATE))


def test_single_label_is_an_error(tmp_path):
    root = make_folder_dataset(tmp_path / "one", labels=("low",), clips_per_label=3, seconds=SECONDS)
    with pytest.raises(DataError, match=r"single label \('low'\)"):
        load(root)


def test_label_without_usable_clips_is_named(folder):
    for clip in (folder / "noise").iterdir():
        clip.write_bytes(b"")
    (folder / "empty_label").mkdir()
    (folder / "empty_label" / "readme.txt").write_text("nothing")

    with pytest.raises(DataError, match=r"label 'empty_label', 'noise' of .* has no usable clips"):
        load(folder)
    report = inspect_clips(DataSpec(str(folder)), progress=False)  # inspect reports instead
    assert report.labels == {"empty_label": 0, "high": 5, "low": 5, "noise": 0}
    assert len(report.problems) == 5


def test_unreadable_clips_are_reported_and_skipped_or_raise_when_strict(folder):
    (folder / "low" / "empty.wav").write_bytes(b"")
    (folder / "high" / "text.wav").write_text("this is not audio")
    truncated = folder / "noise" / "g0_000.wav"
    truncated.write_bytes(truncated.read_bytes()[:500])

    clips = load(folder)

    assert label_counts(clips) == {"high": 5, "low": 5, "noise": 4}
    reasons = {Path(p.path).name: p.reason for p in clips.problems}
    assert sorted(reasons) == ["empty.wav", "g0_000.wav", "text.wav"]
    assert reasons["empty.wav"] == "empty file (0 bytes)"
    assert "not a readable audio file" in reasons["text.wav"]
    assert "truncated" in reasons["g0_000.wav"]
    assert all(Path(p.path).is_absolute() for p in clips.problems)

    with pytest.raises(AudioLoadError) as e:
        load(folder, strict=True)
    assert Path(e.value.source).name in reasons


def test_rows_without_a_label_or_path_are_problems(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=3, seconds=SECONDS)
    with manifest.open("a", newline="") as f:
        csv.writer(f).writerows([["clips/low_000.wav", "", "spk0"], ["", "low", "spk0"]])

    clips = load(manifest)

    assert n_rows(clips) == 9
    assert [p.reason for p in clips.problems] == ["no label", "no audio: neither a path nor bytes"]
    with pytest.raises(DataError, match="low_000.wav: no label"):
        load(manifest, strict=True)


def _paths(ds) -> set[str]:
    return {audio["path"] for audio in ds.with_format(None)["audio"]}


def test_a_manifest_listing_every_clip_twice_keeps_each_once_and_splits_never_share_audio(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=6, seconds=SECONDS)
    rows = list(csv.DictReader(manifest.open()))
    with manifest.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerows(rows)

    clips = load(manifest)

    train, test = (_paths(clips.splits[name]) for name in ("train", "test"))
    assert not train & test and len(train | test) == 18 and n_rows(clips) == 18
    assert clips.problems == [data.ClipProblem(row_path, "duplicate audio (the clip is listed more than once; it is "
                                               "kept once)")
                              for row_path in (str((manifest.parent / row["path"]).resolve()) for row in rows)]
    with pytest.raises(DataError) as error:
        load(manifest, strict=True)
    assert str(error.value) == f"{clips.problems[0].path}: {clips.problems[0].reason}"


def test_a_copy_under_another_name_is_left_out_and_one_under_another_label_leaves_out_both(folder):
    low = sorted((folder / "low").glob("*.wav"))
    (folder / "low" / "zz_copy.wav").write_bytes(low[0].read_bytes())  # the same clip twice, one label
    (folder / "high" / "conflict.wav").write_bytes(low[1].read_bytes())  # the same clip, two labels

    clips = load(folder, split=False)
    report = inspect_clips(DataSpec(str(folder)), progress=False)

    both = "conflicting labels (the same audio is labelled 'high' and 'low'; all 2 copies are left out)"
    expected = [data.ClipProblem(str(folder.resolve() / "high" / "conflict.wav"), both),
                data.ClipProblem(str(low[1].resolve()), both),
                data.ClipProblem(str(folder.resolve() / "low" / "zz_copy.wav"),
                                 f"duplicate audio (the same as {low[0].resolve()}, which is kept)")]
    assert sorted(clips.problems, key=lambda p: p.path) == sorted(expected, key=lambda p: p.path)
    assert report.problems == clips.problems and report.labels == {"high": 5, "low": 4, "noise": 5}
    assert str(low[0].resolve()) in _paths(clips.splits["all"]) and n_rows(clips) == 14
    with pytest.raises(DataError, match="conflicting labels"):
        load(folder, strict=True)


def test_audio_in_two_of_the_sources_own_splits_is_kept_in_train_only(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=3, seconds=SECONDS, with_split=True)
    with manifest.open("a", newline="") as f:
        csv.writer(f).writerow(["clips/low_001.wav", "low", "spk1", "test"])  # a train clip, listed for test too

    clips = load(manifest)

    assert not _paths(clips.splits["train"]) & _paths(clips.splits["test"])
    assert str((manifest.parent / "clips" / "low_001.wav").resolve()) in _paths(clips.splits["train"])
    assert [p.reason for p in clips.problems] == ["duplicate audio (the clip is listed more than once; it is kept once)"]


def test_local_sources_refuse_hub_only_flags(folder, tmp_path):
    with pytest.raises(ConfigError, match="--data-config"):
        load(folder, data_config="en-US")
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=2, seconds=SECONDS)
    with pytest.raises(ConfigError, match="no 'split' column"):
        load(manifest, data_split="train")
    with pytest.raises(ConfigError, match="--test-size"):
        DataSpec(str(folder), test_size=1.5)


# --- splits -----------------------------------------------------------------------------------------------------


def paths(ds: datasets.Dataset) -> list[str]:
    return [a["path"] for a in ds["audio"]]


def test_stratified_split_is_seeded_and_covers_every_label(tmp_path):
    root = make_folder_dataset(tmp_path / "f", labels=LABELS, clips_per_label=10, seconds=0.1)

    a, b, other = load(root, seed=1), load(root, seed=1), load(root, seed=2)

    assert paths(a.splits["test"]) == paths(b.splits["test"])
    assert paths(a.splits["test"]) != paths(other.splits["test"])
    assert len(a.splits["test"]) == 6 and len(a.splits["train"]) == 24  # 20 % of 10 per label
    assert set(a.splits["train"]["label"]) == set(a.splits["test"]["label"]) == {0, 1, 2}
    assert not set(paths(a.splits["train"])) & set(paths(a.splits["test"]))
    assert paths(load(root, test_size=0.5).splits["test"]) != paths(a.splits["test"])


def test_group_disjoint_split_shares_no_group_and_covers_every_label(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=10, seconds=0.1, groups=5)

    clips = load(manifest, group_column="speaker")
    again = load(manifest, group_column="speaker")

    train, test = clips.splits["train"], clips.splits["test"]
    assert not set(train["speaker"]) & set(test["speaker"])
    assert set(train["label"]) == set(test["label"]) == {0, 1, 2}
    assert len(test) == 6  # one speaker of five: exactly the 20 % asked for
    assert paths(test) == paths(again.splits["test"])
    assert clips.group_column == "speaker"


@pytest.mark.parametrize("column", ["speaker", "speaker_id", "client_id", "voice"])
def test_a_speaker_column_splits_by_speaker_by_default(column, tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=10, seconds=0.1, groups=5)
    rows = list(csv.DictReader(manifest.open()))
    rows = [{"path": row["path"], "label": row["label"], column: row["speaker"]} for row in rows]
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    found = load(manifest)
    given = load(manifest, group_column=column)

    assert (found.group_column, found.group_found) == (column, True)
    assert paths(found.splits["test"]) == paths(given.splits["test"])
    assert not set(found.splits["train"][column]) & set(found.splits["test"][column])
    assert found.grouping == f"{column}-disjoint (the {column!r} column, found in the data; --group-column none turns it off)"
    assert given.grouping == f"{column}-disjoint (the {column!r} column, --group-column)"


def test_group_column_none_splits_clip_by_clip(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=10, seconds=0.1, groups=5)

    clips = load(manifest, group_column="none")

    assert clips.group_column is None and not clips.group_found
    assert set(clips.splits["train"]["speaker"]) & set(clips.splits["test"]["speaker"])  # speakers on both sides
    assert paths(clips.splits["test"]) == paths(split_dataset(load(manifest, split=False).splits["all"], 0.2, 42,
                                                              None)["test"])


def test_a_found_column_with_one_speaker_is_not_used(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=10, seconds=0.1, groups=1)

    clips = load(manifest)

    assert clips.group_column is None and clips.grouping == "clip by clip (no group column)"


def test_a_found_column_that_cannot_split_says_how_to_turn_it_off(tmp_path):
    manifest = tmp_path / "m.csv"
    for i in range(4):
        write_clip(tmp_path / f"{i}.wav", class_clip("low", 0.1, 8000, seed=i), 8000)
    manifest.write_text("path,label,speaker\n0.wav,yes,a\n1.wav,yes,b\n2.wav,no,a\n3.wav,no,a\n")

    with pytest.raises(DataError) as error:
        load(manifest)

    assert str(error.value).endswith("all its clips are in speaker 'a'; add clips of it from another group, or split "
                                     "clip by clip with --group-column none (the column was found in the data)")
    assert load(manifest, group_column="none").group_column is None


def test_group_split_that_cannot_cover_every_label_explains(tmp_path):
    ds = datasets.Dataset.from_dict({"label": [0, 0, 1, 1], "speaker": ["a", "b", "a", "a"]})
    ds = ds.cast_column("label", datasets.ClassLabel(names=["yes", "no"]))
    with pytest.raises(DataError, match=r"label 'no' on both sides: all its clips are in speaker 'a'"):
        split_dataset(ds, 0.2, 0, "speaker")
    one = datasets.Dataset.from_dict({"label": [0, 0, 1]}).cast_column("label", datasets.ClassLabel(names=["yes", "no"]))
    with pytest.raises(DataError, match="label 'no' has 1 clip"):
        split_dataset(one, 0.2, 0, None)


def test_split_false_gives_one_split_named_all(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=3, seconds=SECONDS, with_split=True)
    clips = load(manifest, split=False)
    assert list(clips.splits) == ["all"] and len(clips.splits["all"]) == 9


def test_label_maps_are_sorted_and_stable(tmp_path):
    first = make_folder_dataset(tmp_path / "a", labels=("noise", "low", "high"), clips_per_label=2, seconds=0.1)
    second = make_folder_dataset(tmp_path / "b", labels=("high", "noise", "low"), clips_per_label=2, seconds=0.1)

    a, b = load(first, split=False), load(second, split=False)

    assert a.labels == b.labels == ["high", "low", "noise"]
    assert a.id2label == {0: "high", 1: "low", 2: "noise"}
    assert a.label2id == {"high": 0, "low": 1, "noise": 2}
    assert load(first, split=False).id2label == a.id2label


# --- inspect ----------------------------------------------------------------------------------------------------


def test_inspect_reports_counts_durations_rates_and_problems(tmp_path):
    root = make_folder_dataset(tmp_path / "f", labels=("low", "high"), clips_per_label=3, seconds=0.25, sampling_rate=8000)
    write_clip(root / "low" / "long.wav", class_clip("low", 0.5, 16000), 16000)
    (root / "high" / "bad.wav").write_text("nope")

    report = inspect_clips(DataSpec(str(root)), progress=False)
    out = report.to_dict()

    assert out["n_clips"] == 7
    assert out["labels"] == {"high": 3, "low": 4}
    assert out["durations_seconds"]["min"] == pytest.approx(0.25)
    assert out["durations_seconds"]["max"] == pytest.approx(0.5)
    assert out["durations_seconds"]["mean"] == pytest.approx((6 * 0.25 + 0.5) / 7)
    assert out["sampling_rates"] == {"8000": 6, "16000": 1}
    assert out["channels"] == {"1": 7}
    assert [Path(p["path"]).name for p in out["problems"]] == ["bad.wav"]
    assert out["source"] == str(root.resolve())
    json.dumps(out)
    with pytest.raises(AudioLoadError):
        inspect_clips(DataSpec(str(root), strict=True), progress=False)


# --- the Hub ----------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read the variables at import: set what they read
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def test_hub_id_offline_is_a_clear_error_with_no_request(offline, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail(f"a network lookup offline: {a[:2]}"))
    with pytest.raises(DataError) as e:
        load("PolyAI/minds14", data_config="en-US", data_split="train")
    message = str(e.value)
    assert "PolyAI/minds14 (en-US) could not be loaded" in message
    assert "offline" in message and "save_to_disk folder works offline" in message


def test_script_dataset_is_retried_on_the_parquet_conversion(monkeypatch, offline):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append(kwargs.get("revision"))
        if "revision" not in kwargs:
            raise RuntimeError("Dataset scripts are no longer supported, but found minds14.py")
        return hf_dataset("classlabel")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)

    clips = load("PolyAI/minds14", data_config="en-US", data_split="train", label_column="intent")

    assert calls == [None, "refs/convert/parquet"]
    assert clips.labels == ["high", "low", "noise"] and n_rows(clips) == 15
    assert clips.source == "PolyAI/minds14 (en-US) [train]"


# --- large manifests --------------------------------------------------------------------------------------------


def test_iter_manifest_streams_rows_with_their_line_numbers(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.wav", "label": "x"}\n\n{"path": "b.wav", "label": 2, "speaker": "s1"}\n')
    tsv = tmp_path / "m.tsv"
    tsv.write_text("path\tlabel\na.wav\tx\nb.wav\n")

    assert list(data.iter_manifest(jsonl)) == [(1, {"path": "a.wav", "label": "x"}),
                                                (3, {"path": "b.wav", "label": 2, "speaker": "s1"})]
    assert data.manifest_columns(jsonl) == ["path", "label", "speaker"]  # the union, in order of first appearance
    assert list(data.iter_manifest(tsv)) == [(2, {"path": "a.wav", "label": "x"}), (3, {"path": "b.wav", "label": None})]
    assert data.manifest_columns(tsv) == ["path", "label"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.wav"}\n{"path": \n')
    rows = data.iter_manifest(bad)
    assert next(rows) == (1, {"path": "a.wav"})  # rows before the bad line arrive first
    with pytest.raises(DataError, match=r"bad.jsonl: line 2 is not valid JSON"):
        next(rows)
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="line 1 is not a JSON object"):
        list(data.iter_manifest(tmp_path / "list.jsonl"))
    (tmp_path / "wide.csv").write_text("path,label\na.wav,x\nb.wav,y,extra\n")
    with pytest.raises(DataError, match=r"wide.csv: line 3 has more fields than the header \(2\)"):
        list(data.iter_manifest(tmp_path / "wide.csv"))


def test_iter_manifest_progress_counts_bytes_of_the_file(tmp_path, monkeypatch):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"clip{i}.wav,x\n" for i in range(3000)))
    bars = []

    class Bar:
        def __init__(self, total, desc, disable, **kwargs):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(data, "tqdm", Bar)

    assert len(list(data.iter_manifest(manifest, progress=True))) == 3000

    (bar,) = bars
    assert bar.total == bar.n == manifest.stat().st_size and bar.desc == "Reading m.csv"


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_large_manifest_table_on_disk_gives_the_same_clips(tmp_path, hf_cache, monkeypatch, kind):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=6, seconds=SECONDS, kind=kind,
                                     with_split=True)
    files_before = sorted(p.relative_to(tmp_path / "m") for p in (tmp_path / "m").rglob("*"))
    in_memory = load(manifest, group_column="speaker")
    monkeypatch.setattr(data, "MANIFEST_IN_MEMORY_BYTES", 0)  # as if the manifest were too big to hold
    monkeypatch.setattr(data, "MANIFEST_CHUNK_ROWS", 4)

    on_disk = load(manifest, group_column="speaker")
    again = load(manifest, group_column="speaker")  # rewrites the table while the first one is still open

    for clips in (on_disk, again):
        assert clips.labels == in_memory.labels and list(clips.splits) == list(in_memory.splits) == ["train", "test"]
        for name, ds in clips.splits.items():
            assert ds.features == in_memory.splits[name].features
            assert ds.to_list() == in_memory.splits[name].to_list()
    tables = sorted(p.name for p in (tmp_path / "hf_cache" / data.MANIFEST_CACHE_FOLDER).glob("*/*"))
    assert tables == ["test.arrow", "train.arrow"]  # one table per split, no temporary files left
    assert on_disk.splits["train"].cache_files[0]["filename"].startswith(str(tmp_path / "hf_cache"))
    assert sorted(p.relative_to(tmp_path / "m") for p in (tmp_path / "m").rglob("*")) == files_before


def test_jsonl_column_types_come_from_every_row(tmp_path, hf_cache, monkeypatch):
    monkeypatch.setattr(data, "MANIFEST_CHUNK_ROWS", 2)  # the float and the late key arrive chunks after the first
    make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=3, seconds=SECONDS)
    rows = [{"path": f"clips/{label}_{i:03d}.wav", "label": label, "score": 1, "split": "train" if i else "test"}
            for label in LABELS for i in range(3)]
    rows[-1]["score"] = 0.5
    rows[-2]["note"] = {"by": "annotator"}
    manifest = tmp_path / "m" / "scores.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    clips = load(manifest)

    for ds in clips.splits.values():
        assert ds.features["score"] == datasets.Value("float64")
        assert ds.features["note"] == {"by": datasets.Value("string")}
    assert sorted(clips.splits["train"]["score"]) == [0.5] + [1.0] * 5

    rows[4]["score"] = "high"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mixed = r"scores.jsonl: column 'score' mixes value types: line 5 holds 'high', earlier rows hold int64"
    with pytest.raises(DataError, match=mixed):
        load(manifest)


def test_manifest_paths_resolve_exactly_as_pathlib_would(tmp_path):
    for text in ("a.wav", "clips/a.wav", "./a.wav", "a//b.wav", "a/./b.wav", "a/../b.wav", "a/", ".hidden/a.wav", "...",
                 " spaced name.wav ", "/abs/a.wav", "//net/a.wav", "~/a.wav", "a~/b.wav"):
        for base in (tmp_path, Path("/")):
            path = Path(text.strip()).expanduser()
            assert data._manifest_path(text, base) == str(path if path.is_absolute() else base / path), (text, base)
    assert data._manifest_path("  ", tmp_path) is None and data._manifest_path(None, tmp_path) is None


@pytest.fixture
def arrow_peak():
    """Counts Arrow's allocations on a process-wide memory pool that nothing else has used (its peak is still 0),
    so that its peak is this test's alone."""
    default = pa.default_memory_pool()
    unused = [getattr(pa, f"{backend}_memory_pool")() for backend in pa.supported_memory_backends()
              if backend != default.backend_name]
    unused = [pool for pool in unused if pool.max_memory() == 0]
    if not unused:
        pytest.skip("no unused Arrow memory pool to count on")
    pa.set_memory_pool(unused[0])
    yield unused[0]
    pa.set_memory_pool(default)


BIG_ROWS = 200_000
# For BIG_ROWS rows the old loader (a list of row dicts, then Python lists per column) peaked at 139 MiB of Python
# objects while opening the manifest alone. Streaming holds one chunk of MANIFEST_CHUNK_ROWS rows as dicts (~10 MiB)
# plus the scan's arrays (21 bytes a row: 4 MiB), whatever the row count.
BIG_PYTHON_PEAK_BYTES = 48 * 2**20
BIG_ARROW_PEAK_BYTES = 32 * 2**20  # the memory-mapped table costs nothing; new columns and row numbers ~6 MiB


def test_a_large_manifest_is_loaded_in_bounded_memory(tmp_path, hf_cache, monkeypatch, arrow_peak):
    root = tmp_path / "big"
    for i, label in enumerate(LABELS):
        write_clip(root / "clips" / f"{label}.wav", class_clip(label, SECONDS, RATE, i), RATE)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "speaker"])
        writer.writerows([f"clips/{LABELS[i % 3]}.wav", LABELS[i % 3], f"spk{i % 97}"] for i in range(BIG_ROWS))
    assert manifest.stat().st_size > data.MANIFEST_IN_MEMORY_BYTES  # the on-disk path
    # every row names one of three files, so decoding each once is enough; the scan loop itself runs per row. Each
    # row stands for a clip of its own: its content key is its own, or all but three would be duplicates
    monkeypatch.setattr(data, "inspect_audio", functools.lru_cache(maxsize=None)(data.inspect_audio))
    rows = itertools.count()
    monkeypatch.setattr(data, "_content_key", lambda clip, name: np.array([next(rows), 0], dtype=np.uint64))

    tracemalloc.start()
    try:
        clips = load(manifest, group_column="speaker")
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert python_peak < BIG_PYTHON_PEAK_BYTES, f"{python_peak / 2**20:.1f} MiB of Python objects"
    assert arrow_peak.max_memory() < BIG_ARROW_PEAK_BYTES, f"{arrow_peak.max_memory() / 2**20:.1f} MiB of Arrow memory"
    assert clips.labels == ["high", "low", "noise"] and clips.problems == []
    train, test = clips.splits["train"], clips.splits["test"]
    per_label = sum(np.bincount(data._arrow_column(ds, "label").to_numpy(), minlength=3) for ds in (train, test))
    assert dict(zip(clips.labels, per_label.tolist())) == {"high": 66667, "low": 66667, "noise": 66666}
    assert len(train) + len(test) == BIG_ROWS and 0.15 < len(test) / BIG_ROWS < 0.25
    speakers = [set(data._arrow_column(ds, "speaker").unique().to_pylist()) for ds in (train, test)]
    assert not speakers[0] & speakers[1] and len(speakers[0] | speakers[1]) == 97
    last = train[-1] if train[-1]["speaker"] == f"spk{(BIG_ROWS - 1) % 97}" else test[-1]
    assert last["audio"]["path"] == str((root / "clips" / f"{LABELS[(BIG_ROWS - 1) % 3]}.wav").resolve())
    assert last["duration_seconds"] == pytest.approx(SECONDS) and last["sampling_rate"] == RATE


def test_an_unwritable_cache_or_a_full_disk_is_a_data_error(tmp_path, monkeypatch):
    manifest = make_manifest_dataset(tmp_path / "m", labels=LABELS, clips_per_label=2, seconds=SECONDS)
    (tmp_path / "not_a_folder").write_text("")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "not_a_folder"))
    monkeypatch.setattr(data, "MANIFEST_IN_MEMORY_BYTES", 0)

    with pytest.raises(DataError, match="point HF_DATASETS_CACHE at a writable folder"):
        load(manifest)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(files.os, "fsync", full_disk)  # the table's last bytes do not fit on the disk
    with pytest.raises(DataError, match=r"No space left on device.*free some space there or point HF_DATASETS_CACHE"):
        load(manifest)
    assert [p.name for p in (tmp_path / "hf_cache").rglob("*") if p.is_file()] == []


def test_a_split_with_a_minimum_per_label_holds_it_on_both_sides_or_explains():
    ds = datasets.Dataset.from_dict({"label": [0] * 10 + [1] * 6}).cast_column(
        "label", datasets.ClassLabel(names=["yes", "no"]))
    held = split_dataset(ds, 0.1, 0, None, min_per_label=3)
    assert np.bincount(held["test"]["label"]).tolist() == [3, 3]  # 10 % would be 1 and 1
    assert np.bincount(held["train"]["label"]).tolist() == [7, 3]
    with pytest.raises(DataError, match="label 'no' has 6 clips; it needs at least 8 to have 4 in both"):
        split_dataset(ds, 0.1, 0, None, min_per_label=4)


def test_spoken_languages_come_from_the_flag_the_config_or_a_column(tmp_path):
    from audioclf.data import spoken_languages
    from audioclf.testing import write_manifest

    rows = []
    for i, (label, language) in enumerate([("low", "fr-FR"), ("high", "es"), ("low", "fr-FR"), ("high", None),
                                           ("low", "es"), ("high", "fr-FR")] * 2):
        write_clip(tmp_path / f"c{i}.wav", class_clip(label, SECONDS, RATE, seed=i), RATE)
        rows.append({"path": f"c{i}.wav", "label": label, "language": language or ""})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    clips = load(manifest)
    assert spoken_languages(DataSpec(data=str(manifest)), clips) == {"es": "the 'language' column",
                                                                     "fr": "the 'language' column"}
    assert spoken_languages(DataSpec(data=str(manifest), language="German"), clips) == {"de": "--language German"}
    assert spoken_languages(DataSpec(data=str(manifest), data_config="pt-PT"), clips) == {"pt": "--data-config pt-PT"}
    # a config that names no language ('all' of MInDS-14) leaves it to the column
    assert set(spoken_languages(DataSpec(data=str(manifest), data_config="all"), clips)) == {"es", "fr"}
    plain = load(make_manifest_dataset(tmp_path / "plain"))
    assert spoken_languages(DataSpec(data="x"), plain) == {}
