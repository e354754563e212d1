"""Data sources -> labelled clip datasets: label folders, manifests and Hugging Face datasets, scanned once and split.

Every source ends as a `datasets.DatasetDict` with the same columns (see `ClipSet`). Audio stays path/bytes
(`Audio(decode=False)`) and is decoded only by `audioclf.audio`, never by datasets/torchcodec.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from audioclf.audio import AudioSource, inspect_audio, load_audio
from audioclf.config import DataSpec
from audioclf.errors import AudioLoadError, ColumnError, ConfigError, DataError

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
HUB_PROBE_TIMEOUT_SECONDS = 5.0  # one quick request before load_dataset, whose own retries take ~30 s offline


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
        source = _open_source(spec)
        if not split and len(source.splits) > 1:
            source.splits = {"all": datasets.concatenate_datasets(list(source.splits.values()))}
        scans = _scan_source(source, spec.strict, progress)
        labels = _checked_labels(source, scans)
        splits = {name: _finish(source.splits[name], scan, labels) for name, scan in scans.items()}

        if not split:
            (only,) = splits.values()
            splits = {"all": only}
        elif len(splits) == 1:
            (only,) = splits.values()
            splits = dict(split_dataset(only, spec.test_size, spec.seed, spec.group_column))
            derived = True
        elif "train" not in splits:
            raise DataError(f"{source.where} has the splits {', '.join(splits)} but no 'train' split; choose one with --data-split")
        else:
            splits = {name: splits[name] for name in SPLIT_NAMES if name in splits}
    problems = [p for scan in scans.values() for p in scan.problems]
    return ClipSet(datasets.DatasetDict(splits), labels, source.top_problems + problems, spec.group_column, source.where,
                   derived_split=derived)


def inspect_clips(spec: DataSpec, progress: bool = True) -> InspectReport:
    """Scan a source like `load_clips` and report on it. Bad clips are reported, not raised (unless strict)."""
    with _datasets_progress(progress):
        source = _open_source(spec)
        scans = _scan_source(source, spec.strict, progress)
    known = _sort_labels(set(source.declared_labels) | {lab for s in scans.values() for lab in s.labels if lab is not None})
    per_label = Counter(lab for s in scans.values() for lab, ok in zip(s.labels, s.readable) if ok)
    durations = [d for s in scans.values() for d, ok in zip(s.durations, s.readable) if ok]
    rates = Counter(r for s in scans.values() for r, ok in zip(s.rates, s.readable) if ok)
    channels = Counter(c for s in scans.values() for c, ok in zip(s.channels, s.readable) if ok)
    return InspectReport(
        source=source.where,
        labels={label: per_label.get(label, 0) for label in known},
        splits={name: int(sum(s.readable)) for name, s in scans.items()},
        durations_seconds={
            "min": min(durations) if durations else None,
            "mean": float(np.mean(durations)) if durations else None,
            "max": max(durations) if durations else None,
            "total": float(np.sum(durations)) if durations else 0.0,
        },
        sampling_rates=dict(sorted(rates.items())),
        channels=dict(sorted(channels.items())),
        problems=source.top_problems + [p for s in scans.values() for p in s.problems],
    )


def clip_samples(audio: dict, sampling_rate: int) -> np.ndarray:
    """Decode one row's `audio` value ({"path", "bytes"}) to float32 mono samples at `sampling_rate`, shape (samples,)."""
    source, name = _clip_source(audio, "<audio value>")
    return load_audio(source, sampling_rate, name=name)


def split_dataset(
    ds: datasets.Dataset,
    test_size: float,
    seed: int,
    group_column: str | None,
    names: tuple[str, str] = ("train", "test"),
) -> datasets.DatasetDict:
    """Split by `label`, seeded: stratified, or group-disjoint when `group_column` is given.

    Both sides get every label; where that is impossible a DataError says why. Rows keep their order.
    """
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"--test-size {test_size} must be between 0 and 1 (a fraction of the clips)")
    labels = np.asarray(list(ds["label"]))
    label_names = _label_namer(ds)
    rng = np.random.default_rng(seed)
    if group_column is None:
        test_rows = _stratified_test_rows(labels, test_size, rng, label_names)
    else:
        if group_column not in ds.column_names:
            raise ColumnError("--group-column", group_column, ds.column_names, "the clips")
        groups = [str(g) for g in ds[group_column]]
        test_rows = _grouped_test_rows(labels, groups, test_size, rng, label_names, group_column)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_rows] = True
    return datasets.DatasetDict(
        {names[0]: ds.select(np.flatnonzero(~is_test)), names[1]: ds.select(np.flatnonzero(is_test))}
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


def _open_source(spec: DataSpec) -> _Source:
    text = str(spec.data).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _open_saved(path, spec)
        if any(not _hidden(p.relative_to(path)) for p in path.rglob("*.parquet")):
            return _open_parquet(str(path.resolve()), spec, data_dir=path)
        return _open_folder(path, spec)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in MANIFEST_DELIMITERS:
            return _open_manifest(path, spec)
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


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


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
        if entry.is_file():
            if entry.suffix.lower() in AUDIO_EXTENSIONS:
                top.append(ClipProblem(str(entry.resolve()), "not inside a label subfolder, so it has no label"))
            continue
        declared.append(entry.name)
        for clip in sorted(entry.rglob("*")):
            if clip.suffix.lower() in AUDIO_EXTENSIONS and not _hidden(clip.relative_to(entry)) and clip.is_file():
                paths.append(str(clip.resolve()))
                labels.append(entry.name)
    if not paths:
        raise DataError(
            f"no audio clips found in {where}: expected one subfolder per label holding audio files "
            f"({', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    if spec.strict and top:
        raise DataError(f"{top[0].path}: {top[0].reason}")
    ds = datasets.Dataset.from_dict({"audio": paths, "label": labels}).cast_column("audio", datasets.Audio(decode=False))
    return _Source({"all": ds}, _text_label, where, declared_labels=declared, top_problems=top)


def _open_manifest(manifest: Path, spec: DataSpec) -> _Source:
    where = str(manifest.resolve())
    if spec.data_config:
        raise ConfigError(f"--data-config applies to Hub datasets, not to the manifest {where}")
    rows, columns = _read_manifest(manifest)
    if not rows:
        raise DataError(f"manifest {where} has no rows")
    audio_column, label_column = _check_columns(spec, columns, where, audio_default="path")
    by_split: dict[str, list[dict]] = {}
    for line, row in rows:
        name = "all"
        if SPLIT_COLUMN in columns:
            value = str(row.get(SPLIT_COLUMN) or "").strip().lower()
            if value not in SPLIT_NAMES:
                raise DataError(
                    f"{where}: line {line}: {SPLIT_COLUMN} {row.get(SPLIT_COLUMN)!r} is not one of {', '.join(SPLIT_NAMES)}"
                )
            name = value
        by_split.setdefault(name, []).append(row)
    by_split = {name: by_split[name] for name in (*SPLIT_NAMES, "all") if name in by_split}
    if spec.data_split:
        if SPLIT_COLUMN not in columns:
            raise ConfigError(f"--data-split {spec.data_split!r}: the manifest {where} has no {SPLIT_COLUMN!r} column")
        if spec.data_split not in by_split:
            raise DataError(f"--data-split {spec.data_split!r} is not a split of {where}; its splits: {', '.join(by_split)}")
        by_split = {spec.data_split: by_split[spec.data_split]}

    base = manifest.resolve().parent
    extras = [c for c in columns if c not in (audio_column, label_column)]

    def table(split_rows: list[dict]) -> dict[str, list]:
        out = {
            "audio": [_manifest_path(r.get(audio_column), base) for r in split_rows],
            "label": [_text_label(r.get(label_column)) for r in split_rows],
        }
        out.update({_free_name(c): [r.get(c) for r in split_rows] for c in extras})
        return out

    try:  # types come from all rows, so every split gets the same features
        features = datasets.Dataset.from_dict(table([row for _, row in rows])).features
        features["audio"] = datasets.Value("string")  # Audio's own encoder would need torchcodec; cast below
        splits = {
            name: datasets.Dataset.from_dict(table(split_rows), features=features).cast_column("audio", datasets.Audio(decode=False))
            for name, split_rows in by_split.items()
        }
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"{where}: a column mixes value types ({e})") from e
    return _Source(splits, lambda label: label, where)


def _read_manifest(manifest: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """Rows (with their line numbers) and column names of a CSV/TSV or JSONL manifest."""
    delimiter = MANIFEST_DELIMITERS[manifest.suffix.lower()]
    rows: list[tuple[int, dict]] = []
    if delimiter is None:
        columns: dict[str, None] = {}  # ordered union of the keys
        with manifest.open(encoding="utf-8-sig") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{manifest}: line {line} is not valid JSON ({e.msg})") from e
                if not isinstance(row, dict):
                    raise DataError(f"{manifest}: line {line} is not a JSON object")
                columns.update(dict.fromkeys(row))
                rows.append((line, row))
        return rows, list(columns)
    with manifest.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns_list = list(reader.fieldnames or [])
        for row in reader:
            if None in row:
                raise DataError(f"{manifest}: line {reader.line_num} has more fields than the header ({len(columns_list)})")
            rows.append((reader.line_num, row))
    return rows, columns_list


def _manifest_path(value: Any, base: Path) -> str | None:
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
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
    unreachable = _hub_unreachable_reason()
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


def _hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be reached, or None. Skipped in offline mode, where load_dataset uses the cache."""
    if datasets.config.HF_HUB_OFFLINE:
        return None
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_SECONDS)
    except Exception as e:  # any transport failure means the same thing here
        return f"{type(e).__name__}: {e}"
    return None


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
    for flag, column in (("--audio-column", audio_column), ("--label-column", label_column), ("--group-column", spec.group_column)):
        if column is not None and column not in columns:
            raise ColumnError(flag, column, columns, where)
    if audio_column == label_column:
        raise ConfigError(f"--audio-column and --label-column are both {audio_column!r}; they must differ")
    if spec.group_column in (audio_column, label_column):
        raise ConfigError(f"--group-column {spec.group_column!r} is also the audio or label column")
    return audio_column, label_column


# --- scanning ---------------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """Per row of one split: label name (None: none), readable, and what decoding found (0 where unreadable)."""

    labels: list[str | None] = field(default_factory=list)
    readable: list[bool] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    rates: list[int] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    problems: list[ClipProblem] = field(default_factory=list)


def _scan_source(source: _Source, strict: bool, progress: bool) -> dict[str, _Scan]:
    """Decode every clip once, keeping only its duration, rate and channel count."""
    total = sum(len(ds) for ds in source.splits.values())
    scans = {}
    with tqdm(total=total, desc="Scanning clips", unit="clip", disable=None if progress else True) as bar:
        for name, ds in source.splits.items():
            scan = _Scan()
            for row, (audio_value, raw_label) in enumerate(_iter_rows(ds)):
                label = source.decode_label(raw_label)
                fallback = f"{source.where} [{name}] row {row}"
                info, problem = None, None
                if label is None:
                    clip_name = (audio_value or {}).get("path") or fallback
                    problem = ClipProblem(clip_name, "no label")
                    if strict:
                        raise DataError(f"{clip_name}: no label")
                else:
                    try:
                        info = inspect_audio(*_clip_source(audio_value, fallback))
                    except AudioLoadError as e:
                        if strict:
                            raise
                        problem = ClipProblem(e.source, e.reason)
                scan.labels.append(label)
                scan.readable.append(info is not None)
                scan.durations.append(info.duration_seconds if info else 0.0)
                scan.rates.append(info.sampling_rate if info else 0)
                scan.channels.append(info.channels if info else 0)
                if problem:
                    scan.problems.append(problem)
                bar.update(1)
            scans[name] = scan
    return scans


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


def _checked_labels(source: _Source, scans: dict[str, _Scan]) -> list[str]:
    """Sorted label names, after checking there are at least two and each kept at least one clip."""
    seen = {label for scan in scans.values() for label in scan.labels if label is not None}
    labels = _sort_labels(set(source.declared_labels) | seen)
    kept = Counter(label for scan in scans.values() for label, ok in zip(scan.labels, scan.readable) if ok)
    n_rows = sum(len(scan.labels) for scan in scans.values())
    problems = [p for scan in scans.values() for p in scan.problems]
    if not kept:
        first = f"; the first: {problems[0].path}: {problems[0].reason}" if problems else ""
        raise DataError(f"none of the {n_rows} clips in {source.where} could be used{first}")
    if len(labels) < 2:
        raise DataError(f"{source.where} has a single label ({labels[0]!r}); a classifier needs at least two")
    empty = [label for label in labels if kept[label] == 0]
    if empty:
        raise DataError(
            f"label {', '.join(map(repr, empty))} of {source.where} has no usable clips"
            f" ({len(problems)} clip(s) were unreadable or unlabelled; `audioclf data inspect` lists them)"
        )
    return labels


def _sort_labels(labels: set[str]) -> list[str]:
    """Alphabetical, except that integer labels sort by value (2 before 10)."""
    if labels and all(re.fullmatch(r"-?\d+", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _finish(ds: datasets.Dataset, scan: _Scan, labels: list[str]) -> datasets.Dataset:
    """Replace the raw label by its index, add what scanning found, drop unreadable rows."""
    label2id = {label: i for i, label in enumerate(labels)}
    extras = [c for c in ds.column_names if c not in ("audio", "label")]
    ds = ds.remove_columns("label")
    ids = [label2id[label] if ok else -1 for label, ok in zip(scan.labels, scan.readable)]
    ds = ds.add_column("label", ids, feature=datasets.ClassLabel(names=labels))
    ds = ds.add_column("duration_seconds", scan.durations, feature=datasets.Value("float64"))
    ds = ds.add_column("sampling_rate", scan.rates, feature=datasets.Value("int64"))
    ds = ds.add_column("channels", scan.channels, feature=datasets.Value("int64"))
    ds = ds.select_columns(["audio", "label", *SCAN_COLUMNS, *extras])
    if not all(scan.readable):
        ds = ds.select(np.flatnonzero(scan.readable))
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


def _stratified_test_rows(labels: np.ndarray, test_size: float, rng: np.random.Generator, name: Callable) -> np.ndarray:
    test = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        if len(rows) < 2:
            raise DataError(
                f"label {name(label)!r} has {len(rows)} clip; it needs at least 2 to be in both the train and test split"
            )
        n_test = min(max(int(round(test_size * len(rows))), 1), len(rows) - 1)
        test.extend(rows[:n_test])
    return np.sort(np.asarray(test, dtype=np.int64))


GROUP_SPLIT_ATTEMPTS = 64  # seeded random group orders tried; the one closest to test_size wins


def _grouped_test_rows(
    labels: np.ndarray, groups: list[str], test_size: float, rng: np.random.Generator, name: Callable, group_column: str
) -> np.ndarray:
    """Choose whole groups for the test side so that both sides hold every label and the size is near test_size."""
    group_names, group_of_row = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
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
                f"{group_column} {group_names[holders[0]]!r}; add clips of it from another group, or split without --group-column"
            )
    target = test_size * len(labels)
    totals = counts.sum(axis=0)
    sizes = counts.sum(axis=1)
    best, best_gap = None, None
    for _ in range(GROUP_SPLIT_ATTEMPTS):
        in_test = np.zeros(len(group_names), dtype=bool)
        test_counts = np.zeros(len(label_values), dtype=np.int64)

        def can_take(g: int) -> bool:  # the train side must keep a clip of every label
            return bool(np.all(totals - test_counts - counts[g] > 0))

        def take(g: int) -> None:
            in_test[g] = True
            test_counts[:] += counts[g]

        for li in rng.permutation(len(label_values)):  # first every label onto the test side
            if test_counts[li]:
                continue
            candidates = [g for g in rng.permutation(np.flatnonzero(counts[:, li])) if not in_test[g] and can_take(g)]
            if candidates:
                take(min(candidates, key=lambda g: sizes[g]))
        for g in rng.permutation(len(group_names)):  # then fill towards the target size
            n_test = test_counts.sum()
            if not in_test[g] and abs(n_test + sizes[g] - target) < abs(n_test - target) and can_take(g):
                take(g)
        if np.all(test_counts > 0):
            gap = abs(test_counts.sum() - target)
            if best_gap is None or gap < best_gap:
                best, best_gap = in_test.copy(), gap
    if best is None:
        raise DataError(
            f"no split by {group_column!r} puts every label on both sides ({len(group_names)} groups, "
            f"{len(label_values)} labels); add groups, or split without --group-column"
        )
    return np.flatnonzero(best[group_of_row])
