"""Data sources -> labelled clip datasets: label folders, manifests and Hugging Face datasets, scanned once and split.

Every source ends as a `datasets.DatasetDict` with the same columns (see `ClipSet`). Audio stays path/bytes
(`Audio(decode=False)`) and is decoded only by `audioclf.audio`, never by datasets/torchcodec.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from audioclf import files, hub
from audioclf.audio import AudioSource, inspect_audio, load_audio
from audioclf.config import GROUP_COLUMNS, NO_GROUP, DataSpec, language_code
from audioclf.errors import AudioLoadError, ColumnError, ConfigError, DataError, shown_path

DEMO_MANIFEST = Path(__file__).parent / "demo_data" / "minds14_synth" / "manifest.csv"

# What libsndfile reads, plus container types it does not (m4a, aac, wma): those are listed so that such files
# are reported as unreadable clips instead of silently left out of a label folder.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".snd",
     ".caf", ".w64", ".rf64", ".voc", ".m4a", ".aac", ".wma"}
)  # fmt: skip
MANIFEST_DELIMITERS = {".csv": ",", ".tsv": "\t", ".jsonl": None}  # None: one JSON object per line
SPLIT_NAMES = ("train", "validation", "test")
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}  # Hub datasets name splits freely
SPLIT_COLUMN = "split"  # a manifest column with this name brings the manifest's own splits
SCAN_COLUMNS = ("duration_seconds", "sampling_rate", "channels")  # what scanning adds to every row
RESERVED_COLUMNS = ("audio", "label", *SCAN_COLUMNS)
SCAN_BATCH_SIZE = 64  # rows read at a time while scanning: path/bytes of 64 clips, never their decoded samples
PROGRESS_EVERY_ROWS = 1024  # manifest rows read between progress bar updates
MANIFEST_CHUNK_ROWS = 10_000  # manifest rows held as Python objects at once (a few MB) before they become Arrow
MANIFEST_IN_MEMORY_BYTES = 4 * 2**20  # larger manifests become Arrow files in the datasets cache, not memory
MANIFEST_CACHE_FOLDER = "audioclf_manifests"  # under datasets.config.HF_DATASETS_CACHE


@dataclass(frozen=True)
class ClipProblem:
    """A clip that was left out, and why."""

    path: str
    reason: str


@dataclass
class ClipSet:
    """Scanned, cleaned, split clips.

    Every split has the columns `audio` ({"path", "bytes"}, as `Audio(decode=False)` gives), `label`
    (`ClassLabel(names=labels)`), `duration_seconds`, `sampling_rate` (the file's native rate), `channels`,
    and the source's other columns under their own names.
    """

    splits: datasets.DatasetDict
    labels: list[str]
    problems: list[ClipProblem]
    group_column: str | None
    source: str
    derived_split: bool = False  # True when the train/test split was made here, not brought by the source
    group_found: bool = False  # True when group_column was found in the source (config.GROUP_COLUMNS), not given

    @property
    def grouping(self) -> str:
        """How splits here keep groups apart, in words: `speaker-disjoint (the speaker column, found in the data)`."""
        if self.group_column is None:
            return "clip by clip (no group column)"
        how = "found in the data; --group-column none turns it off" if self.group_found else "--group-column"
        return f"{self.group_column}-disjoint (the {self.group_column!r} column, {how})"

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


@dataclass(frozen=True)
class InspectReport:
    """What scanning a source found: clips per label and split, durations, rates, channels, problems."""

    source: str
    labels: dict[str, int]  # label -> readable clips, in label order; 0 for a label whose clips were all dropped
    splits: dict[str, int]  # the source's own split -> readable clips ("all" when it has none)
    durations_seconds: dict[str, float | None]  # min, mean, max, total of the readable clips
    sampling_rates: dict[int, int]  # native rate in Hz -> clips
    channels: dict[int, int]  # channel count -> clips
    problems: list[ClipProblem]

    @property
    def n_clips(self) -> int:
        return sum(self.labels.values())

    def to_dict(self) -> dict:
        """JSON-ready: rate and channel keys become strings."""
        return {
            "source": self.source,
            "n_clips": self.n_clips,
            "labels": dict(self.labels),
            "splits": dict(self.splits),
            "durations_seconds": dict(self.durations_seconds),
            "sampling_rates": {str(rate): n for rate, n in self.sampling_rates.items()},
            "channels": {str(count): n for count, n in self.channels.items()},
            "n_problems": len(self.problems),
            "problems": [{"path": p.path, "reason": p.reason} for p in self.problems],
        }


# --- public API -------------------------------------------------------------------------------------------------


def load_clips(spec: DataSpec, split: bool = True, progress: bool = True) -> ClipSet:
    """Open `spec.data`, decode every clip once to check it, drop unreadable ones and split.

    The source's own splits are kept when it has more than one; a single split is split by `split_dataset`.
    With `split=False` everything is one split named "all".
    """
    derived = False
    with _datasets_progress(progress):
        source = _open_source(spec, progress)
        if not split and len(source.splits) > 1:
            source.splits = {"all": datasets.concatenate_datasets(list(source.splits.values()))}
        scans, names = _scan_source(source, spec.strict, progress)
        labels = _checked_labels(source, scans, names)
        splits = {name: _finish(source.splits[name], scan, labels, names) for name, scan in scans.items()}
        group_column, found = group_column_of(spec, list(splits.values()))

        if not split:
            (only,) = splits.values()
            splits = {"all": only}
        elif len(splits) == 1:
            (only,) = splits.values()
            splits = dict(split_dataset(only, spec.test_size, spec.seed, group_column, found=found))
            derived = True
        elif "train" not in splits:
            raise DataError(f"{source.where} has the splits {', '.join(splits)} but no 'train' split; choose one with --data-split")
        else:
            splits = {name: splits[name] for name in SPLIT_NAMES if name in splits}
    problems = [p for scan in scans.values() for p in scan.problems]
    return ClipSet(datasets.DatasetDict(splits), labels, source.top_problems + problems, group_column, source.where,
                   derived_split=derived, group_found=found)


def inspect_clips(spec: DataSpec, progress: bool = True) -> InspectReport:
    """Scan a source like `load_clips` and report on it. Bad clips are reported, not raised (unless strict)."""
    with _datasets_progress(progress):
        source = _open_source(spec, progress)
        scans, names = _scan_source(source, spec.strict, progress)
    per_label = dict(zip(names, _kept_per_code(scans, len(names))))
    durations = np.concatenate([s.durations[s.readable] for s in scans.values()])
    rates = np.concatenate([s.rates[s.readable] for s in scans.values()])
    channels = np.concatenate([s.channels[s.readable] for s in scans.values()])
    return InspectReport(
        source=shown_path(source.where),
        labels={label: per_label.get(label, 0) for label in _sort_labels(set(source.declared_labels) | set(names))},
        splits={name: int(s.readable.sum()) for name, s in scans.items()},
        durations_seconds={
            "min": float(durations.min()) if len(durations) else None,
            "mean": float(durations.mean()) if len(durations) else None,
            "max": float(durations.max()) if len(durations) else None,
            "total": float(durations.sum()),
        },
        sampling_rates=_value_counts(rates),
        channels=_value_counts(channels),
        problems=source.top_problems + [p for s in scans.values() for p in s.problems],
    )


PROBLEMS_SHOWN = 3  # clips a summary of the skipped ones names; the whole list goes to metrics.json


def skipped_summary(problems: list[ClipProblem], listed_in: str, shown: int = PROBLEMS_SHOWN) -> list[str]:
    """What train and evaluate print about the clips they left out: how many, why (each kind of reason counted, the
    most frequent first) and the first `shown` of them; `listed_in` says where every one is listed. No lines when
    none were left out."""
    if not problems:
        return []
    kinds: dict[str, int] = {}
    for problem in problems:
        kind = re.split(r" \(|, |; |: ", problem.reason, maxsplit=1)[0]  # "file not found", "duplicate audio"
        kinds[kind] = kinds.get(kind, 0) + 1
    why = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda item: -item[1]))
    lines = [f"skipped {len(problems)} clip(s) ({why}); all are listed in {listed_in}"]
    lines += [f"  {problem.path}: {problem.reason}" for problem in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more")
    return lines


def _value_counts(values: np.ndarray) -> dict[int, int]:
    """Sorted value -> how often it occurs."""
    found, counts = np.unique(values, return_counts=True)
    return {int(v): int(n) for v, n in zip(found, counts)}


def clip_samples(audio: dict, sampling_rate: int) -> np.ndarray:
    """Decode one row's `audio` value ({"path", "bytes"}) to float32 mono samples at `sampling_rate`, shape (samples,)."""
    source, name = _clip_source(audio, "<audio value>")
    return load_audio(source, sampling_rate, name=name)


def absolute_source(text: str) -> str:
    """A local path (or a glob with matches) made absolute; anything else, a Hub id, as it is."""
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    if glob.has_magic(text) and glob.glob(os.path.expanduser(text), recursive=True):
        return os.path.abspath(os.path.expanduser(text))
    return text


def group_column_of(spec: DataSpec, splits: list[datasets.Dataset]) -> tuple[str | None, bool]:
    """The column that keeps groups apart in splits, and whether it was found rather than given: --group-column as
    given, none for `none`, else the first of GROUP_COLUMNS that every split has, with two groups or more in all."""
    if spec.group_column == NO_GROUP:
        return None, False
    if spec.group_column is not None:
        return spec.group_column, False
    for column in GROUP_COLUMNS:
        if all(column in ds.column_names for ds in splits):
            groups = {str(name) for ds in splits for name in _group_codes(ds, column)[0]}
            if len(groups) > 1:
                return column, True
    return None, False


def split_dataset(
    ds: datasets.Dataset,
    test_size: float,
    seed: int,
    group_column: str | None,
    names: tuple[str, str] = ("train", "test"),
    found: bool = False,
    min_per_label: int = 1,
) -> datasets.DatasetDict:
    """Split by `label`, seeded: stratified, or group-disjoint when `group_column` is given (`found`: found in
    the data by `group_column_of`, not given, which the messages say).

    Both sides get at least `min_per_label` clips of every label, the held-out side more than `test_size` of them
    where that takes more; where that is impossible a DataError says why. Rows keep their order.
    """
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"--test-size {test_size} must be between 0 and 1 (a fraction of the clips)")
    labels = _arrow_column(ds, "label").to_numpy()
    label_names = _label_namer(ds)
    rng = np.random.default_rng(seed)
    if group_column is None:
        test_rows = _stratified_test_rows(labels, test_size, rng, label_names, min_per_label)
    else:
        if group_column not in ds.column_names:
            raise ColumnError("--group-column", group_column, ds.column_names, "the clips")
        group_names, group_of_row = _group_codes(ds, group_column)
        without = ("split clip by clip with --group-column none (the column was found in the data)" if found
                   else "split without --group-column")
        test_rows = _grouped_test_rows(labels, group_names, group_of_row, test_size, rng, label_names, group_column,
                                       without, min_per_label)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_rows] = True
    return datasets.DatasetDict(
        {names[0]: ds.select(np.flatnonzero(~is_test), keep_in_memory=True),  # row numbers only, nothing on disk
         names[1]: ds.select(np.flatnonzero(is_test), keep_in_memory=True)}
    )


def demo_manifest() -> Path:
    """The bundled demo manifest (synthetic MInDS-14-like clips); a DataError if the install lacks it."""
    if not DEMO_MANIFEST.is_file():
        raise DataError(f"the demo data is missing from this install: expected {DEMO_MANIFEST}")
    return DEMO_MANIFEST


# --- opening sources --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """A source opened but not yet scanned: splits with an `audio` column (Audio(decode=False)), a raw `label`
    column that `decode_label` turns into a name (None: no label), and the source's other columns."""

    splits: dict[str, datasets.Dataset]
    decode_label: Callable[[Any], str | None]
    where: str
    declared_labels: list[str] = field(default_factory=list)  # label folders / ClassLabel names, even without clips
    top_problems: list[ClipProblem] = field(default_factory=list)  # found while opening, before any decoding


def _open_source(spec: DataSpec, progress: bool = False) -> _Source:
    text = str(spec.data).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _open_saved(path, spec)
        if any(clip.lower().endswith(".parquet") for clip in files.files_under(path)):
            return _open_parquet(str(path.resolve()), spec, data_dir=path)
        return _open_folder(path, spec)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in MANIFEST_DELIMITERS:
            return _open_manifest(path, spec, progress)
        if suffix == ".parquet":
            return _open_parquet(str(path.resolve()), spec, files=[path])
        raise DataError(
            f"{path}: not a data source; expected a folder, a manifest ({', '.join(MANIFEST_DELIMITERS)}) or a .parquet file"
        )
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"no files match {text!r}")
        not_parquet = [str(p) for p in matches if p.suffix.lower() != ".parquet"]
        if not_parquet:
            raise DataError(f"{text!r} matches files that are not parquet ({not_parquet[0]}); a glob may only name parquet files")
        return _open_parquet(text, spec, files=matches)
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) and path.suffix.lower() not in (*MANIFEST_DELIMITERS, ".parquet"):
        return _open_hub(text, spec)
    raise DataError(f"{text}: no such file or folder")


def _open_folder(root: Path, spec: DataSpec) -> _Source:
    where = str(root.resolve())
    if spec.data_config or spec.data_split:
        flag = "--data-config" if spec.data_config else "--data-split"
        raise ConfigError(f"{flag} applies to Hub, save_to_disk and parquet datasets, not to the label folder {where}")
    columns = ["audio", "label"]  # what a label folder offers as columns
    _check_columns(spec, columns, where, audio_default="audio")
    paths, labels, declared, top = [], [], [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if entry.suffix.lower() in AUDIO_EXTENSIONS:
                top.append(ClipProblem(shown_path(_clip_path(entry)), "not inside a label subfolder, so it has no label"))
            continue
        if _is_text(entry.name):
            declared.append(entry.name)
        # each file once, however many links lead to it; folders linked in are read, but never twice
        for clip in sorted(map(Path, files.files_under(entry))):
            # anything but a folder: a broken link or a pipe named .wav is reported by decoding, not left out
            if clip.suffix.lower() in AUDIO_EXTENSIONS:
                path = _clip_path(clip)
                if not _is_text(path):
                    top.append(ClipProblem(shown_path(path), NOT_UTF8_FILE_NAME))
                    continue
                paths.append(path)
                labels.append(entry.name)
    if not paths:
        if top:
            raise DataError(f"none of the clips in {shown_path(where)} could be used; the first: {top[0].path}: "
                            f"{top[0].reason}")
        raise DataError(
            f"no audio clips found in {shown_path(where)}: expected one subfolder per label holding audio files "
            f"({', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    if spec.strict and top:
        raise DataError(f"{top[0].path}: {top[0].reason}")
    ds = datasets.Dataset.from_dict({"audio": paths, "label": labels}).cast_column("audio", datasets.Audio(decode=False))
    return _Source({"all": ds}, _text_label, where, declared_labels=declared, top_problems=top)


# Arrow (and so every dataset) holds text as UTF-8; such a file can be classified by `predict` but not scanned here.
NOT_UTF8_FILE_NAME = ("file name is not valid UTF-8, which a dataset's text columns cannot hold; rename it to use it "
                      "(audioclf predict reads it as it is)")


def _is_text(value: str) -> bool:
    """Whether a str is valid UTF-8 text: not a file name with surrogate escapes for bytes that are not UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clip_path(clip: Path) -> str:
    """A clip's absolute path with its links resolved; a link that leads nowhere (broken, or a loop) keeps its own
    name, so that decoding reports it as what it is."""
    return str(clip.resolve()) if clip.exists() else str(clip.parent.resolve() / clip.name)


def _open_manifest(manifest: Path, spec: DataSpec, progress: bool) -> _Source:
    """Stream the manifest's rows, a chunk at a time, into one Arrow table per split: in memory for a small manifest,
    a file under the datasets cache for a large one. No split ever exists as Python rows."""
    where = str(manifest.resolve())
    if spec.data_config:
        raise ConfigError(f"--data-config applies to Hub datasets, not to the manifest {where}")
    with contextlib.closing(iter_manifest(manifest)) as rows:
        if next(rows, None) is None:
            raise DataError(f"manifest {where} has no rows")
    if MANIFEST_DELIMITERS[manifest.suffix.lower()] is None:
        # JSONL: keys and value types may change at any row, so a first pass finds them all
        raw_columns = (spec.audio_column or "path", spec.label_column or "label")  # become strings whatever they hold
        types = _jsonl_types(manifest, where, raw_columns, progress)
    else:
        types = dict.fromkeys(manifest_columns(manifest), pa.string())  # csv gives strings (None for a short row)
    columns = list(types)
    audio_column, label_column = _check_columns(spec, columns, where, audio_default="path")
    if spec.data_split and SPLIT_COLUMN not in columns:
        raise ConfigError(f"--data-split {spec.data_split!r}: the manifest {where} has no {SPLIT_COLUMN!r} column")
    extras = [c for c in columns if c not in (audio_column, label_column)]
    features = datasets.Features({"audio": datasets.Audio(decode=False), "label": datasets.Value("string")})
    features.update(datasets.Features.from_arrow_schema(pa.schema([(_free_name(c), types[c]) for c in extras])))
    schema = features.arrow_schema
    base = manifest.resolve().parent
    in_memory = manifest.stat().st_size <= MANIFEST_IN_MEMORY_BYTES
    folder = None if in_memory else _manifest_cache_folder(where, audio_column, label_column)

    sinks: dict[str, _SplitSink] = {}
    found: set[str] = set()  # split names, including those --data-split leaves out
    problems: list[ClipProblem] = []  # rows left out before scanning: values a table cannot hold
    try:
        desc = f"Reading {manifest.name}" if progress else None
        for chunk in _chunked(_manifest_reader(manifest, desc), MANIFEST_CHUNK_ROWS):
            by_split: dict[str, list[tuple[int, dict]]] = {}
            for line, row in chunk:
                by_split.setdefault(_manifest_split(row, line, columns, where), []).append((line, row))
            found.update(by_split)
            for name, split_rows in by_split.items():
                if spec.data_split and name != spec.data_split:
                    continue
                if name not in sinks:
                    sinks[name] = _SplitSink(folder, name, schema)
                batch = [row for _, row in split_rows]
                try:
                    sinks[name].write(_manifest_batch(batch, audio_column, label_column, extras, schema, base, where))
                except UnicodeEncodeError:  # a value that is not UTF-8 (a file name as os.listdir gives it)
                    batch = _text_rows(split_rows, audio_column, base, where, spec.strict, problems)
                    sinks[name].write(_manifest_batch(batch, audio_column, label_column, extras, schema, base, where))
        names = [name for name in (*SPLIT_NAMES, "all") if name in found]
        if spec.data_split and spec.data_split not in found:
            raise DataError(
                f"--data-split {spec.data_split!r} is not a split of {where}; its splits: {', '.join(names)}"
            )
        info = datasets.DatasetInfo(features=features)
        splits = {name: sinks[name].dataset(info) for name in names if name in sinks}
    except BaseException:
        for sink in sinks.values():
            sink.discard()
        raise
    return _Source(splits, lambda label: label, where, top_problems=problems)


def _text_rows(rows: list[tuple[int, dict]], audio_column: str, base: Path, where: str, strict: bool,
               problems: list[ClipProblem]) -> list[dict]:
    """The rows whose values are all UTF-8 text; each other one becomes a problem (a DataError when strict)."""
    kept = []
    for line, row in rows:
        bad = next((column for column, value in row.items() if isinstance(value, str) and not _is_text(value)), None)
        if bad is None:
            kept.append(row)
            continue
        path = _manifest_path(row.get(audio_column), base)
        if bad == audio_column:
            problem = ClipProblem(shown_path(path), NOT_UTF8_FILE_NAME)
        else:
            problem = ClipProblem(shown_path(path or f"{where} line {line}"),
                                  f"line {line}: column {shown_path(bad)!r} is not valid UTF-8 text")
        if strict:
            raise DataError(f"{problem.path}: {problem.reason}")
        problems.append(problem)
    return kept


def _manifest_split(row: dict, line: int, columns: list[str], where: str) -> str:
    if SPLIT_COLUMN not in columns:
        return "all"
    value = str(row.get(SPLIT_COLUMN) or "").strip().lower()
    if value not in SPLIT_NAMES:
        raise DataError(
            f"{where}: line {line}: {SPLIT_COLUMN} {row.get(SPLIT_COLUMN)!r} is not one of {', '.join(SPLIT_NAMES)}"
        )
    return value


def _manifest_batch(rows: list[dict], audio_column: str, label_column: str, extras: list[str], schema: pa.Schema,
                    base: Path, where: str) -> pa.RecordBatch:
    """Rows of one split as an Arrow batch of `schema`: audio as Audio(decode=False) storage, text labels, extras."""
    paths = pa.array([_manifest_path(row.get(audio_column), base) for row in rows], type=pa.string())
    no_bytes = pa.nulls(len(rows), type=pa.binary())
    audio = pa.StructArray.from_arrays([no_bytes, paths], names=["bytes", "path"], mask=paths.is_null())
    arrays = [audio, pa.array([_text_label(row.get(label_column)) for row in rows], type=pa.string())]
    for column, target in zip(extras, schema.types[2:]):
        try:
            arrays.append(pa.array([row.get(column) for row in rows], type=target))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:  # _jsonl_types should have caught it first
            raise DataError(f"{where}: column {column!r} mixes value types ({e})") from e
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _jsonl_types(manifest: Path, where: str, raw_columns: tuple[str, ...], progress: bool) -> dict[str, pa.DataType]:
    """Every key of a JSONL manifest in order of first appearance, with the Arrow type that inferring it from all
    values at once would give (int and float give float; int and string are an error), found a chunk at a time."""
    types: dict[str, pa.DataType] = {}
    desc = f"Checking columns of {manifest.name}" if progress else None
    for chunk in _chunked(_manifest_reader(manifest, desc), MANIFEST_CHUNK_ROWS):
        for _, row in chunk:
            types.update({key: pa.null() for key in row if key not in types})
        for column, known in types.items():
            if column in raw_columns:
                types[column] = pa.string()
                continue
            values = [row.get(column) for _, row in chunk]
            try:
                try:
                    found = pa.array(values).type
                except UnicodeEncodeError:  # text that is not UTF-8: its row is left out later (_text_rows)
                    found = pa.array([_typed_as_text(value) for value in values]).type
                types[column] = _unify_types(known, found)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                types[column] = _unify_rows(known, column, chunk, where)
    return types


def _unify_rows(known: pa.DataType, column: str, chunk: list[tuple[int, dict]], where: str) -> pa.DataType:
    """Unify one value at a time, to name the first line whose value does not fit the ones before it."""
    for line, row in chunk:
        value = row.get(column)
        try:
            known = _unify_types(known, pa.array([_typed_as_text(value)]).type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise DataError(
                f"{where}: column {column!r} mixes value types: line {line} holds {shown}, earlier rows hold {known} "
                f"values ({e}); give the column one type"
            ) from e
    return known


def _typed_as_text(value: Any) -> Any:
    """A value Arrow can type: text that is not UTF-8 as its shown form (still text), anything else as it is."""
    return shown_path(value) if isinstance(value, str) and not _is_text(value) else value


def _unify_types(known: pa.DataType, new: pa.DataType) -> pa.DataType:
    if known == new:
        return known
    both = [pa.schema([("value", known)]), pa.schema([("value", new)])]
    return pa.unify_schemas(both, promote_options="permissive").field("value").type


def _manifest_cache_folder(where: str, audio_column: str, label_column: str) -> Path:
    """Where the Arrow tables of a large manifest go: one folder per manifest and column choice, rewritten at every
    load, under the datasets cache (never next to the user's data)."""
    key = hashlib.sha256(json.dumps([where, audio_column, label_column]).encode()).hexdigest()[:24]
    folder = Path(datasets.config.HF_DATASETS_CACHE) / MANIFEST_CACHE_FOLDER / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"no folder for the Arrow table of the manifest {where}: {e}; point HF_DATASETS_CACHE at a writable folder"
        ) from e
    return folder


class _SplitSink:
    """One split's rows as an Arrow IPC stream (the format datasets memory-maps): in memory, or in a temporary file
    of `folder` that becomes `<split>.arrow` only once it is complete."""

    def __init__(self, folder: Path | None, split: str, schema: pa.Schema):
        self.path = None if folder is None else folder / f"{split}.arrow"
        self.output = None
        with self._disk_errors():
            if folder is None:
                self.stream = pa.BufferOutputStream()
            else:
                self.output = files.AtomicFile(self.path)
                self.stream = self.output.file
            try:
                self.writer = pa.ipc.new_stream(self.stream, schema)
            except BaseException:
                if self.output is not None:
                    self.output.discard()
                raise

    def write(self, batch: pa.RecordBatch) -> None:
        with self._disk_errors():
            self.writer.write_batch(batch)

    def dataset(self, info: datasets.DatasetInfo) -> datasets.Dataset:
        with self._disk_errors():
            self.writer.close()
            if self.output is None:
                table = pa.ipc.open_stream(self.stream.getvalue()).read_all()
                return datasets.Dataset(datasets.table.InMemoryTable(table), info=info)
            self.output.commit()  # a process still reading the previous table keeps its own copy
        return datasets.Dataset.from_file(str(self.path), info=info)

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:  # a full disk or a read-only cache: the user can fix it without touching the data
            raise DataError(
                f"could not write the manifest's Arrow table {self.path} ({e}); free some space there or point "
                f"HF_DATASETS_CACHE at another folder"
            ) from e

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        if self.output is not None:
            self.output.discard()


def _chunked(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_manifest(manifest: Path, progress: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, row) of each row of a CSV/TSV or JSONL manifest, read one row at a time.

    CSV/TSV rows map every header column to a string (None where a row has fewer fields); JSONL rows are the JSON
    objects as written, so their keys may differ from row to row (`manifest_columns` gives the union). Blank JSONL
    lines are skipped. A DataError names the line of a row that is not valid JSON, not an object, or has more fields
    than the header. With `progress`, a bar shows the bytes read out of the file's size.
    """
    manifest = Path(manifest)
    return _manifest_reader(manifest, f"Reading {manifest.name}" if progress else None)


def _manifest_reader(manifest: Path, desc: str | None) -> Iterator[tuple[int, dict]]:
    delimiter = _manifest_delimiter(manifest)
    total = manifest.stat().st_size
    with manifest.open("rb") as raw, tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=desc is None) as bar:
        # bytes that are not UTF-8 (a file name as a Latin-1 system wrote it) come through as `os.fsdecode` gives them
        f = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="" if delimiter else None)
        for n, (line, row) in enumerate(_manifest_rows(f, manifest, delimiter), start=1):
            yield line, row
            if n % PROGRESS_EVERY_ROWS == 0:
                bar.update(raw.tell() - bar.n)  # raw.tell(): bytes handed to the text decoder so far
        bar.update(total - bar.n)


def manifest_columns(manifest: Path) -> list[str]:
    """Column names of a manifest: the CSV/TSV header, or for JSONL the union of all rows' keys in order of first
    appearance. JSONL rows need not share keys, so this reads the whole file (one row at a time)."""
    manifest = Path(manifest)
    delimiter = _manifest_delimiter(manifest)
    if delimiter is not None:
        with manifest.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            return list(csv.DictReader(f, delimiter=delimiter).fieldnames or [])
    columns: dict[str, None] = {}  # an ordered set
    for _, row in iter_manifest(manifest):
        columns.update(dict.fromkeys(row))
    return list(columns)


def _manifest_delimiter(manifest: Path) -> str | None:
    suffix = manifest.suffix.lower()
    if suffix not in MANIFEST_DELIMITERS:
        raise DataError(f"{manifest}: not a manifest; expected one of {', '.join(MANIFEST_DELIMITERS)}")
    return MANIFEST_DELIMITERS[suffix]


def _manifest_rows(f: io.TextIOBase, manifest: Path, delimiter: str | None) -> Iterator[tuple[int, dict]]:
    if delimiter is None:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{manifest}: line {line} is not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise DataError(f"{manifest}: line {line} is not a JSON object")
            yield line, row
        return
    reader = csv.DictReader(f, delimiter=delimiter)
    n_columns = len(reader.fieldnames or [])
    for row in reader:
        if None in row:
            raise DataError(f"{manifest}: line {reader.line_num} has more fields than the header ({n_columns})")
        yield reader.line_num, row


# A relative POSIX path with no empty, "." or "~" parts: already what Path would make of it, so joining the strings
# gives Path's result without building two Paths a row (half the time of reading a large manifest)
PLAIN_RELATIVE_PATH = re.compile(r"(?!~)(?:(?!\.(?:/|$))[^/]+/)*(?!\.$)[^/]+")


def _manifest_path(value: Any, base: Path) -> str | None:
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    if os.sep == "/" and PLAIN_RELATIVE_PATH.fullmatch(text):
        return f"{str(base).rstrip('/')}/{text}"
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else base / path)


def _open_saved(path: Path, spec: DataSpec) -> _Source:
    where = str(path.resolve())
    if spec.data_config:
        raise ConfigError(f"--data-config applies to Hub datasets, not to the save_to_disk folder {where}")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, pyarrow errors alike
        raise DataError(f"{where}: not a readable save_to_disk dataset ({e})") from e
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return _from_hf(_pick_split(splits, spec.data_split, where), spec, where, base=path.resolve())


def _open_parquet(text: str, spec: DataSpec, files: list[Path] | None = None, data_dir: Path | None = None) -> _Source:
    where = text
    if spec.data_config:
        raise ConfigError(f"--data-config applies to Hub datasets, not to the parquet source {where}")
    try:
        if data_dir is not None:  # let datasets find split names (train-*.parquet, test/...) in the folder
            loaded = datasets.load_dataset("parquet", data_dir=str(data_dir.resolve()))
        else:
            loaded = datasets.load_dataset("parquet", data_files=[str(p.resolve()) for p in files])
    except Exception as e:
        raise DataError(f"{where}: the parquet data could not be read ({e})") from e
    base = (data_dir or files[0].parent).resolve()
    return _from_hf(_pick_split(dict(loaded), spec.data_split, where), spec, where, base=base)


def _open_hub(repo_id: str, spec: DataSpec) -> _Source:
    where = repo_id + (f" ({spec.data_config})" if spec.data_config else "")
    works_offline = (
        f"A local label folder, .csv/.jsonl manifest or save_to_disk folder works offline "
        f"(there is no local file or folder {repo_id!r})."
    )
    unreachable = hub.unreachable_reason()
    if unreachable:
        raise DataError(
            f"the Hub dataset {where} could not be loaded: the Hub cannot be reached ({unreachable}); "
            f"with a copy in the local cache, set HF_HUB_OFFLINE=1. {works_offline}"
        )
    try:
        try:
            loaded = datasets.load_dataset(repo_id, spec.data_config, split=spec.data_split)
        except RuntimeError as e:
            if "script" not in str(e).lower():
                raise
            # datasets >= 4 refuses loading scripts (MInDS-14 has one); the Hub keeps a parquet conversion
            loaded = datasets.load_dataset(repo_id, spec.data_config, split=spec.data_split, revision="refs/convert/parquet")
    except (ConnectionError, FileNotFoundError) as e:
        if datasets.config.HF_HUB_OFFLINE:
            raise DataError(
                f"the Hub dataset {where} could not be loaded: offline mode is on (HF_HUB_OFFLINE) and it is not "
                f"in the local cache ({e}). {works_offline}"
            ) from e
        raise DataError(f"the Hub dataset {where} could not be loaded ({e}). {works_offline}") from e
    except Exception as e:  # unknown config or split, gated or missing repo: datasets says which
        raise DataError(f"the Hub dataset {where} could not be loaded ({type(e).__name__}: {e})") from e
    if spec.data_split:
        where += f" [{spec.data_split}]"
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {spec.data_split or "train": loaded}
    return _from_hf(splits, spec, where, base=None)


def _pick_split(splits: dict[str, datasets.Dataset], wanted: str | None, where: str) -> dict[str, datasets.Dataset]:
    if wanted is None:
        return splits
    if wanted not in splits:
        raise DataError(f"--data-split {wanted!r} is not a split of {where}; its splits: {', '.join(splits)}")
    return {wanted: splits[wanted]}


def _from_hf(splits: dict[str, datasets.Dataset], spec: DataSpec, where: str, base: Path | None) -> _Source:
    """Bring Hugging Face splits to the common shape: `audio` as Audio(decode=False), `label` raw, others kept."""
    if not splits or all(len(ds) == 0 for ds in splits.values()):
        raise DataError(f"{where} has no rows")
    if len(splits) > 1:
        renamed = {SPLIT_ALIASES.get(name, name): ds for name, ds in splits.items()}
        unknown = [name for name in renamed if name not in SPLIT_NAMES]
        if unknown or len(renamed) < len(splits):
            raise DataError(
                f"{where} has the splits {', '.join(splits)}; expected {', '.join(SPLIT_NAMES)}: pick one with --data-split"
            )
        splits = renamed
    first = next(iter(splits.values()))
    audio_column, label_column = _check_columns(spec, first.column_names, where, audio_default="audio")
    features = first.features
    decode_label = _feature_label_decoder(features[label_column], label_column, where)
    declared = list(features[label_column].names) if isinstance(features[label_column], datasets.ClassLabel) else []

    out = {}
    for name, ds in splits.items():
        for column, feature in ds.features.items():  # decoding is ours: no Audio column may reach torchcodec
            if isinstance(feature, datasets.Audio) and feature.decode:
                ds = ds.cast_column(column, datasets.Audio(decode=False))
        ds = _as_audio_column(ds, audio_column, where, base)
        mapping = {c: f"source_{c}" for c in ds.column_names if c in RESERVED_COLUMNS and c not in (audio_column, label_column)}
        mapping.update({audio_column: "audio", label_column: "label"})
        out[name] = ds.rename_columns({old: new for old, new in mapping.items() if old != new})
    return _Source(out, decode_label, where, declared_labels=declared)


def _as_audio_column(ds: datasets.Dataset, column: str, where: str, base: Path | None) -> datasets.Dataset:
    feature = ds.features[column]
    if isinstance(feature, datasets.Audio):
        return ds
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        # paths written relative to the dataset's folder
        paths = [None if p is None else str(Path(p) if Path(p).is_absolute() or base is None else base / p) for p in ds[column]]
        ds = ds.remove_columns(column).add_column(column, paths, feature=datasets.Value("string"))
        return ds.cast_column(column, datasets.Audio(decode=False))
    if isinstance(feature, dict) and {"path", "bytes"} <= set(feature):
        return ds.cast_column(column, datasets.Audio(decode=False))
    raise DataError(
        f"column {column!r} of {where} holds {feature}; expected audio: an Audio feature, path strings or {{path, bytes}}"
    )


def _feature_label_decoder(feature: Any, column: str, where: str) -> Callable[[Any], str | None]:
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        return lambda value: None if value is None or value < 0 else names[value]
    if isinstance(feature, datasets.Value) and (
        feature.dtype in ("string", "large_string", "bool") or feature.dtype.startswith(("int", "uint"))
    ):
        return _text_label
    raise DataError(f"label column {column!r} of {where} holds {feature}; expected strings, integers or a ClassLabel")


def _text_label(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _free_name(column: str) -> str:
    """A source column keeps its name unless it is one audioclf writes itself."""
    return f"source_{column}" if column in RESERVED_COLUMNS else column


def _check_columns(spec: DataSpec, columns: list[str], where: str, audio_default: str) -> tuple[str, str]:
    audio_column = spec.audio_column or audio_default
    label_column = spec.label_column or "label"
    group_column = None if spec.group_column == NO_GROUP else spec.group_column
    for flag, column in (("--audio-column", audio_column), ("--label-column", label_column), ("--group-column", group_column)):
        if column is not None and column not in columns:
            raise ColumnError(flag, column, columns, where)
    if audio_column == label_column:
        raise ConfigError(f"--audio-column and --label-column are both {audio_column!r}; they must differ")
    if group_column in (audio_column, label_column):
        raise ConfigError(f"--group-column {group_column!r} is also the audio or label column")
    return audio_column, label_column


# --- scanning ---------------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """Per row of one split, in arrays: label (an index into the scan's label names; -1: no label), readable, and
    what decoding found (0 where unreadable). A row left out as a duplicate is no longer readable."""

    label_codes: np.ndarray  # int32
    readable: np.ndarray  # bool
    durations: np.ndarray  # float64 seconds
    rates: np.ndarray  # int32 Hz
    channels: np.ndarray  # int32
    content_keys: np.ndarray  # (rows, 2) uint64: the digest of each readable clip's bytes (_content_key)
    problems: list[ClipProblem] = field(default_factory=list)

    @classmethod
    def empty(cls, n_rows: int) -> _Scan:
        return cls(np.full(n_rows, -1, dtype=np.int32), np.zeros(n_rows, dtype=bool), np.zeros(n_rows),
                   np.zeros(n_rows, dtype=np.int32), np.zeros(n_rows, dtype=np.int32),
                   np.zeros((n_rows, 2), dtype=np.uint64))


def _scan_source(source: _Source, strict: bool, progress: bool) -> tuple[dict[str, _Scan], list[str]]:
    """Decode every clip once, keeping only its duration, rate, channel count and a digest of its bytes, by which
    copies of one clip are then left out (`_drop_duplicates`).

    Returns each split's scan and the label names its codes index, in order of first appearance.
    """
    total = sum(len(ds) for ds in source.splits.values())
    names: list[str] = []
    code_of: dict[str, int] = {}
    scans = {}
    with tqdm(total=total, desc="Scanning clips", unit="clip", disable=None if progress else True) as bar:
        for name, ds in source.splits.items():
            scan = _Scan.empty(len(ds))
            for row, (audio_value, raw_label) in enumerate(_iter_rows(ds)):
                label = source.decode_label(raw_label)
                fallback = f"{source.where} [{name}] row {row}"
                if label is None:
                    clip_name = (audio_value or {}).get("path") or fallback
                    scan.problems.append(ClipProblem(clip_name, "no label"))
                    if strict:
                        raise DataError(f"{clip_name}: no label")
                else:
                    code = code_of.get(label)
                    if code is None:
                        code = code_of[label] = len(names)
                        names.append(label)
                    scan.label_codes[row] = code
                    try:
                        clip, clip_name = _clip_source(audio_value, fallback)
                        info = inspect_audio(clip, clip_name)
                        scan.content_keys[row] = _content_key(clip, clip_name)
                    except AudioLoadError as e:
                        if strict:
                            raise
                        scan.problems.append(ClipProblem(e.source, e.reason))
                    else:
                        scan.readable[row] = True
                        scan.durations[row] = info.duration_seconds
                        scan.rates[row] = info.sampling_rate
                        scan.channels[row] = info.channels
                bar.update(1)
            scans[name] = scan
    _drop_duplicates(source, scans, names, strict)
    return scans, names


CONTENT_KEY_READ_BYTES = 2**20  # a clip's bytes are hashed a MiB at a time


def _content_key(clip: AudioSource, name: str) -> np.ndarray:
    """Two uint64s that name a clip by its bytes (BLAKE2b, 128 bits): copies of one file, wherever they are and
    whatever they are called, have the same key."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(clip, (bytes, bytearray, memoryview)):
        digest.update(clip)
    else:
        try:
            with open(clip, "rb") as f:
                while block := f.read(CONTENT_KEY_READ_BYTES):
                    digest.update(block)
        except OSError as e:
            raise AudioLoadError(name, f"cannot be read ({e.strerror or e})") from e
    return np.frombuffer(digest.digest(), dtype="<u8")


def _drop_duplicates(source: _Source, scans: dict[str, _Scan], names: list[str], strict: bool) -> None:
    """Leave out every copy of a clip but one, so that no audio is on both sides of a split, and every copy of a clip
    that rows label differently, since no label of it can be trusted. The copy kept is the first in the source's
    order, its train split first. Each row left out is a problem of its split (with `strict`, the first is a
    DataError); the scans are changed in place."""
    order = sorted(scans, key=lambda split: SPLIT_NAMES.index(split) if split in SPLIT_NAMES else len(SPLIT_NAMES))
    rows = {split: np.flatnonzero(scans[split].readable) for split in order}
    keys = np.concatenate([scans[split].content_keys[rows[split]] for split in order])
    if len(keys) < 2:
        return
    _, copy_of, copies = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    copy_of = copy_of.reshape(-1)
    repeated = np.flatnonzero(copies[copy_of] > 1)  # positions in the splits' readable rows, in order
    if not len(repeated):
        return
    split_index = np.repeat(np.arange(len(order)), [len(rows[split]) for split in order])
    offsets = np.cumsum([0] + [len(rows[split]) for split in order])
    place = [(order[split_index[i]], int(rows[order[split_index[i]]][i - offsets[split_index[i]]])) for i in repeated]
    clip_names = _row_names(source, place)
    groups: dict[int, list[int]] = {}
    for i, position in enumerate(repeated):
        groups.setdefault(int(copy_of[position]), []).append(i)
    left_out: list[tuple[int, str]] = []  # (index into place, reason)
    for members in groups.values():
        labels = [names[scans[place[i][0]].label_codes[place[i][1]]] for i in members]
        kept = clip_names[members[0]]
        if len(set(labels)) > 1:
            shown = " and ".join(repr(label) for label in sorted(set(labels)))
            reason = f"conflicting labels (the same audio is labelled {shown}; all {len(members)} copies are left out)"
            left_out += [(i, reason) for i in members]
        else:
            left_out += [(i, f"duplicate audio (the same as {kept}, which is kept)" if clip_names[i] != kept else
                          "duplicate audio (the clip is listed more than once; it is kept once)") for i in members[1:]]
    for i, reason in sorted(left_out):
        split, row = place[i]
        if strict:
            raise DataError(f"{clip_names[i]}: {reason}")
        scans[split].readable[row] = False
        scans[split].problems.append(ClipProblem(clip_names[i], reason))


def _row_names(source: _Source, place: list[tuple[str, int]]) -> list[str]:
    """How the clips at (split, row) are named in problems: their paths, or where they are in the source."""
    found: dict[tuple[str, int], str] = {}
    for split in dict.fromkeys(split for split, _ in place):
        rows = [row for s, row in place if s == split]
        values = source.splits[split].select_columns(["audio"]).select(rows)["audio"]
        for row, value in zip(rows, values):
            found[split, row] = (value or {}).get("path") or f"{source.where} [{split}] row {row}"
    return [found[key] for key in place]


def _iter_rows(ds: datasets.Dataset) -> Iterator[tuple[dict | None, Any]]:
    for batch in ds.select_columns(["audio", "label"]).iter(batch_size=SCAN_BATCH_SIZE):
        yield from zip(batch["audio"], batch["label"])


def _clip_source(value: Any, fallback_name: str) -> tuple[AudioSource, str]:
    """What to decode for an audio value ({"path", "bytes"} or a path), and its name in messages."""
    if isinstance(value, (str, os.PathLike)):
        return str(value), str(value)
    value = value or {}
    path, data = value.get("path"), value.get("bytes")
    if data is not None:
        return data, path or fallback_name
    if path:
        return path, path
    raise AudioLoadError(fallback_name, "no audio: neither a path nor bytes")


def _checked_labels(source: _Source, scans: dict[str, _Scan], names: list[str]) -> list[str]:
    """Sorted label names, after checking there are at least two and each kept at least one clip."""
    labels = _sort_labels(set(source.declared_labels) | set(names))
    kept = dict(zip(names, _kept_per_code(scans, len(names))))
    n_rows = sum(len(scan.readable) for scan in scans.values())
    problems = [p for scan in scans.values() for p in scan.problems]
    if not any(kept.values()):
        first = f"; the first: {problems[0].path}: {problems[0].reason}" if problems else ""
        raise DataError(f"none of the {n_rows} clips in {source.where} could be used{first}")
    if len(labels) < 2:
        raise DataError(f"{source.where} has a single label ({labels[0]!r}); a classifier needs at least two")
    empty = [label for label in labels if kept.get(label, 0) == 0]
    if empty:
        raise DataError(
            f"label {', '.join(map(repr, empty))} of {source.where} has no usable clips"
            f" ({len(problems)} clip(s) were unreadable, unlabelled or duplicates; `audioclf data inspect` lists them)"
        )
    return labels


def _kept_per_code(scans: dict[str, _Scan], n_codes: int) -> list[int]:
    """Readable clips per label code, over all splits."""
    counts = np.zeros(n_codes, dtype=np.int64)
    for scan in scans.values():
        counts += np.bincount(scan.label_codes[scan.readable], minlength=n_codes)
    return [int(n) for n in counts]


def _sort_labels(labels: set[str]) -> list[str]:
    """Alphabetical, except that integer labels sort by value (2 before 10)."""
    if labels and all(re.fullmatch(r"-?\d+", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _finish(ds: datasets.Dataset, scan: _Scan, labels: list[str], names: list[str]) -> datasets.Dataset:
    """Replace the raw label by its index in `labels`, add what scanning found, drop unreadable rows."""
    label2id = {label: i for i, label in enumerate(labels)}
    id_of_code = np.array([label2id[name] for name in names], dtype=np.int64)
    ids = np.full(len(scan.readable), -1, dtype=np.int64)
    ids[scan.readable] = id_of_code[scan.label_codes[scan.readable]]
    extras = [c for c in ds.column_names if c not in ("audio", "label")]
    ds = ds.remove_columns("label")
    ds = ds.add_column("label", ids, feature=datasets.ClassLabel(names=labels))
    ds = ds.add_column("duration_seconds", scan.durations, feature=datasets.Value("float64"))
    ds = ds.add_column("sampling_rate", scan.rates, feature=datasets.Value("int64"))
    ds = ds.add_column("channels", scan.channels, feature=datasets.Value("int64"))
    ds = ds.select_columns(["audio", "label", *SCAN_COLUMNS, *extras])
    if not scan.readable.all():
        ds = ds.select(np.flatnonzero(scan.readable), keep_in_memory=True)  # the row numbers, not the rows
    return ds


@contextlib.contextmanager
def _datasets_progress(progress: bool) -> Iterator[None]:
    """Silence datasets' own progress bars when no progress is wanted, and restore them after."""
    was_enabled = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


# --- splitting --------------------------------------------------------------------------------------------------


def _label_namer(ds: datasets.Dataset) -> Callable[[Any], str]:
    feature = ds.features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        return lambda i: feature.int2str(int(i))
    return str


def _arrow_column(ds: datasets.Dataset, column: str) -> pa.ChunkedArray:
    """One column as Arrow, in the dataset's row order (after any `select`)."""
    if not hasattr(ds, "_indices"):
        return ds.with_format("arrow")[column]
    # datasets gathers selected rows one Python slice per row (seconds and one chunk per row for 1M rows); Arrow's
    # take on the row numbers does it at once
    values = ds.data.column(column)
    return values if ds._indices is None else values.take(ds._indices.column(0))


def _group_codes(ds: datasets.Dataset, column: str) -> tuple[np.ndarray, np.ndarray]:
    """The sorted names of the groups (each value as text; None is "None") and each row's index into them."""
    values = _arrow_column(ds, column)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        # Arrow's own dictionary: one Python string per group, not per row
        encoded = pc.dictionary_encode(pc.fill_null(values, "None")).combine_chunks()
        found = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
        order = np.argsort(found, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return found[order], rank[encoded.indices.to_numpy(zero_copy_only=False)]
    return np.unique(np.asarray([str(g) for g in values.to_pylist()], dtype=object), return_inverse=True)


def _stratified_test_rows(labels: np.ndarray, test_size: float, rng: np.random.Generator, name: Callable,
                          min_per_label: int = 1) -> np.ndarray:
    test = [np.zeros(0, dtype=np.int64)]
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        if len(rows) < 2 * min_per_label:
            raise DataError(
                f"label {name(label)!r} has {len(rows)} clip{'s' if len(rows) != 1 else ''}; it needs at least "
                f"{2 * min_per_label} to have {min_per_label} in both the train and test split"
            )
        n_test = min(max(int(round(test_size * len(rows))), min_per_label), len(rows) - min_per_label)
        test.append(rows[:n_test])
    return np.sort(np.concatenate(test).astype(np.int64))


GROUP_SPLIT_ATTEMPTS = 64  # seeded random group orders tried; the one closest to test_size wins


def _grouped_test_rows(
    labels: np.ndarray, group_names: np.ndarray, group_of_row: np.ndarray, test_size: float, rng: np.random.Generator,
    name: Callable, group_column: str, without: str, min_per_label: int = 1,
) -> np.ndarray:
    """Choose whole groups for the test side so that both sides hold `min_per_label` clips of every label and the
    size is near test_size (or above it, where the minimum takes more)."""
    label_values, label_of_row = np.unique(labels, return_inverse=True)
    # counts[g, l]: clips of label l in group g
    counts = np.zeros((len(group_names), len(label_values)), dtype=np.int64)
    np.add.at(counts, (group_of_row, label_of_row), 1)
    if len(group_names) < 2:
        raise DataError(f"--group-column {group_column!r} has a single group; a group-disjoint split needs at least two")
    for li, label in enumerate(label_values):
        holders = np.flatnonzero(counts[:, li])
        if len(holders) < 2:
            raise DataError(
                f"cannot split by {group_column!r} with label {name(label)!r} on both sides: all its clips are in "
                f"{group_column} {group_names[holders[0]]!r}; add clips of it from another group, or {without}"
            )
    target = test_size * len(labels)
    totals = counts.sum(axis=0)
    sizes = counts.sum(axis=1)
    best, best_gap = None, None
    for _ in range(GROUP_SPLIT_ATTEMPTS):
        in_test = np.zeros(len(group_names), dtype=bool)
        test_counts = np.zeros(len(label_values), dtype=np.int64)

        def can_take(g: int) -> bool:  # the train side must keep min_per_label clips of every label
            return bool(np.all(totals - test_counts - counts[g] >= min_per_label))

        def take(g: int) -> None:
            in_test[g] = True
            test_counts[:] += counts[g]

        for li in rng.permutation(len(label_values)):  # first every label onto the test side, min_per_label times
            while test_counts[li] < min_per_label:
                candidates = [g for g in rng.permutation(np.flatnonzero(counts[:, li])) if not in_test[g] and can_take(g)]
                if not candidates:
                    break
                take(min(candidates, key=lambda g: sizes[g]))
        for g in rng.permutation(len(group_names)):  # then fill towards the target size
            n_test = test_counts.sum()
            if not in_test[g] and abs(n_test + sizes[g] - target) < abs(n_test - target) and can_take(g):
                take(g)
        if np.all(test_counts >= min_per_label):
            gap = abs(test_counts.sum() - target)
            if best_gap is None or gap < best_gap:
                best, best_gap = in_test.copy(), gap
    if best is None:
        on_both = "every label" if min_per_label == 1 else f"{min_per_label} clips of every label"
        raise DataError(
            f"no split by {group_column!r} puts {on_both} on both sides ({len(group_names)} groups, "
            f"{len(label_values)} labels); add groups, or {without}"
        )
    return np.flatnonzero(best[group_of_row])


# --- the language spoken ------------------------------------------------------------------------------------------

LANGUAGE_COLUMN = "language"  # a column naming each clip's language (fr, fr-FR, French)


def spoken_languages(spec: DataSpec, clips: ClipSet) -> dict[str, str]:
    """The languages the clips are said to be in, as Whisper language codes, each with where that was said:
    --language, else a --data-config that names one (MInDS-14's fr-FR), else a `language` column."""
    if spec.language:
        return {language_code(spec.language): f"--language {spec.language}"}  # DataSpec has checked it
    if spec.data_config and language_code(spec.data_config):
        return {language_code(spec.data_config): f"--data-config {spec.data_config}"}
    found: dict[str, str] = {}
    for split in clips.splits.values():
        if LANGUAGE_COLUMN not in split.column_names:
            continue
        feature = split.features[LANGUAGE_COLUMN]
        name = feature.int2str if isinstance(feature, datasets.ClassLabel) else str
        for value in pc.unique(_arrow_column(split, LANGUAGE_COLUMN)).to_pylist():
            code = language_code(name(value)) if value is not None else None
            if code is not None:
                found.setdefault(code, f"the {LANGUAGE_COLUMN!r} column")
    return found
