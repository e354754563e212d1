"""Batch inference at scale: many files in, one result row per file out, as Parquet or JSONL shards.

Inputs are audio files, a manifest (CSV/TSV/JSONL, read one row at a time) or a glob (expanded lazily), so a
million-row manifest is never held in memory. Two runners share the inputs and the writer: `predict_local` runs one
in-process Classifier, the one `audioclf predict` uses, and `predict_ray` runs a pool of Ray actors through Ray
Data, each loading the model once. `classify_dataset` is the Ray part alone, for a `ray.data.Dataset` of paths or
bytes that a user already has. Ray is an optional extra (`pip install 'audioclf[ray]'`), imported only here and
only when asked for.

A result row is `{"path", "labels", "scores", "error"}`: the top-k labels and their scores, highest first, exactly
the predictions `audioclf predict` gives, or the reason the file could not be classified. The path is as
`errors.shown_path` shows it (a file name that is not UTF-8 with its odd bytes as \\xNN), since a column holds text.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from audioclf.audio import AudioSource, describe_source
from audioclf.errors import ColumnError, ConfigError, DataError, shown_path
from audioclf.files import AtomicDirectory, check_writable_output, find_files, new_temp_file

RESULT_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("labels", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float64())),
    ("error", pa.string()),  # null where the file was classified
])
FORMATS = ("parquet", "jsonl")
MANIFEST_PATH_COLUMN = "path"
SHARD_ROWS = 100_000  # result rows per output file
ROW_GROUP_ROWS = 10_000  # result rows gathered before a Parquet row group is written
# Inputs per Ray block. A block is what one actor takes at a time, so blocks this small keep every actor busy to the
# end of a run; the actor still batches clips of similar length within it.
RAY_BLOCK_ROWS = 64
RAY_EXTRA = "pip install 'audioclf[ray]'"
GLOB_MAGIC = "*?["  # characters that make --input a glob rather than a file name


@dataclass(frozen=True)
class Item:
    """One input: the path its result row names, what to decode (a path or bytes), or why there is nothing to."""

    path: str
    source: AudioSource | None = None
    error: str | None = None


# --- inputs -------------------------------------------------------------------------------------


def file_items(paths: Iterable[str]) -> Iterator[Item]:
    """Items of audio file paths, named by their absolute paths (Ray workers need not share our working folder)."""
    for path in paths:
        path = os.path.abspath(path)
        yield Item(path, path)


def input_items(given: str, audio_column: str | None = None, progress: bool = False) -> Iterator[Item]:
    """Items of a manifest (CSV/TSV/JSONL; the `audio_column` of each row, relative paths resolved against the
    manifest's folder) or of a glob (`clips/**/*.wav`; folders it matches are left out; `files.find_files`), read
    lazily. With
    `progress`, a bar shows how much of a manifest has been read."""
    if _is_manifest(given):
        return _manifest_items(Path(given), audio_column or MANIFEST_PATH_COLUMN, progress)
    if audio_column is not None:
        raise ConfigError(f"--audio-column {audio_column!r}: applies to a manifest, and --input {given} is a glob")
    if os.path.isdir(given):
        raise ConfigError(f"--input {given}: a folder; give a glob such as '{os.path.join(given, '**', '*.wav')}' "
                          f"or a manifest (.csv, .tsv, .jsonl)")
    return file_items(find_files(given))  # each folder read once, each file once: links cannot loop


def count_inputs(given: str, audio_column: str | None = None, progress: bool = False) -> int | None:
    """How many items `input_items` gives: a manifest's rows, counted in one streaming pass; None for a glob."""
    if not _is_manifest(given):
        return None
    return sum(1 for _ in _manifest_items(Path(given), audio_column or MANIFEST_PATH_COLUMN, progress))


def non_empty(items: Iterator[Item], where: str) -> Iterator[Item]:
    """The items, after reading the first one now (so that a bad manifest or an empty glob fails here)."""
    first = next(items, None)
    if first is None:
        raise DataError(f"{where}: no files to classify")
    return itertools.chain([first], items)


def _is_manifest(given: str) -> bool:
    from audioclf.data import MANIFEST_DELIMITERS

    return Path(given).suffix.lower() in MANIFEST_DELIMITERS and not any(c in given for c in GLOB_MAGIC)


def _manifest_items(manifest: Path, column: str, progress: bool) -> Iterator[Item]:
    from audioclf.data import iter_manifest

    if not manifest.is_file():
        raise DataError(f"{manifest}: manifest not found")
    base = manifest.parent
    for n, (line, row) in enumerate(iter_manifest(manifest, progress=progress)):
        if n == 0 and column not in row:  # CSV rows carry every header column; JSONL rows need not
            raise ColumnError("--audio-column", column, list(row), str(manifest))
        value = row.get(column)
        text = str(value).strip() if value is not None else ""
        if not text:
            yield Item("", error=f"{manifest} line {line}: no path in column {column!r}")
            continue
        path = os.path.abspath(os.path.join(base, os.path.expanduser(text)))
        yield Item(path, path)


# --- classification -----------------------------------------------------------------------------


def classify_items(classifier, items: Iterable[Item], top_k: int | None = 5) -> Iterator[dict]:
    """Result rows of items, in order: the classifier's top-k predictions, or why an item could not be classified.
    Items that already carry an error pass through; the others are decoded ahead and batched by the classifier."""
    waiting: deque[Item] = deque()  # items taken from `items`, not yet answered

    def sources() -> Iterator[AudioSource]:
        for item in items:
            waiting.append(item)
            if item.error is None:
                yield item.source

    for outcome in classifier.classify_files(sources(), top_k):
        while waiting[0].error is not None:
            yield _failed(waiting.popleft())
        item = waiting.popleft()
        if outcome.error is not None:
            yield {"path": shown_path(item.path), "labels": None, "scores": None, "error": outcome.error}
        else:
            yield {"path": shown_path(item.path), "labels": [p["label"] for p in outcome.predictions],
                   "scores": [p["score"] for p in outcome.predictions], "error": None}
    while waiting:  # only items that carried their error are left
        yield _failed(waiting.popleft())


def _failed(item: Item) -> dict:
    return {"path": shown_path(item.path), "labels": None, "scores": None, "error": item.error}


def results_table(rows: list[dict]) -> pa.Table:
    """Result rows as a table of RESULT_SCHEMA."""
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


# --- output -------------------------------------------------------------------------------------


def check_output(out: Path, overwrite: bool) -> None:
    """Raise OutputExistsError where OUT exists and is not to be overwritten, OutputError where it is not a folder
    or file that may be replaced or cannot be written there (files.check_writable_output)."""
    check_writable_output(out, "--output", "folder", overwrite=overwrite)


class ShardWriter:
    """Result tables written as part-NNNNN.parquet (or .jsonl) files of at most SHARD_ROWS rows into a temporary
    folder beside OUT, which replaces OUT only when the run is complete: OUT is never half written."""

    def __init__(self, out: Path, format: str = "parquet", overwrite: bool = False):
        if format not in FORMATS:
            raise ConfigError(f"--format {format!r}: must be one of {', '.join(FORMATS)}")
        out = Path(out)
        check_output(out, overwrite)
        self.out = out
        self.format = format
        self._staging = AtomicDirectory(out, overwrite=overwrite)
        self.temp = self._staging.path
        self.rows = 0
        self.errors = 0
        self.shards = 0
        self._pending: list[pa.Table] = []  # Parquet: rows waiting for a full row group
        self._pending_rows = 0
        self._shard_rows = 0  # rows in the open shard
        self._file = None

    def write(self, table: pa.Table) -> None:
        table = table.select(RESULT_SCHEMA.names).cast(RESULT_SCHEMA)
        self.rows += table.num_rows
        self.errors += table.num_rows - table.column("error").null_count
        while table.num_rows:
            room = SHARD_ROWS - self._shard_rows
            part, table = table.slice(0, room), table.slice(room)
            self._write_part(part)
            if self._shard_rows == SHARD_ROWS:
                self._close_shard()

    def close(self, keep: bool) -> None:
        try:
            if keep:
                if self.shards == 0:  # no rows: one empty shard still carries the columns
                    self._open_shard()
                self._close_shard()
                self._staging.commit()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._staging.discard()  # nothing left to do where it became OUT

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(keep=kind is None)

    def _write_part(self, part: pa.Table) -> None:
        if self._file is None:
            self._open_shard()
        self._shard_rows += part.num_rows
        if self.format == "jsonl":
            self._file.write("".join(json.dumps(row) + "\n" for row in part.to_pylist()))
            return
        self._pending.append(part)
        self._pending_rows += part.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush_row_group()

    def _open_shard(self) -> None:
        path = self.temp / f"part-{self.shards:05d}.{self.format}"
        if self.format == "jsonl":
            self._file = path.open("w", encoding="utf-8")
        else:
            import pyarrow.parquet as pq

            self._file = pq.ParquetWriter(path, RESULT_SCHEMA)
        self.shards += 1

    def _flush_row_group(self) -> None:
        if self._pending:
            self._file.write_table(pa.concat_tables(self._pending))
        self._pending, self._pending_rows = [], 0

    def _close_shard(self) -> None:
        if self._file is None:
            return
        if self.format == "parquet":
            self._flush_row_group()
        self._file.close()
        self._file = None
        self._shard_rows = 0


def read_results(out: Path) -> pa.Table:
    """Every row of an output folder written by ShardWriter, shard by shard in order."""
    shards = sorted(Path(out).glob("part-*"))
    tables = []
    for shard in shards:
        if shard.suffix == ".parquet":
            import pyarrow.parquet as pq

            tables.append(pq.read_table(shard, schema=RESULT_SCHEMA))
        else:
            with shard.open(encoding="utf-8") as f:
                tables.append(results_table([json.loads(line) for line in f]))
    return pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()


# --- runners ------------------------------------------------------------------------------------


def predict_local(classifier, items: Iterable[Item], writer: ShardWriter, top_k: int | None = 5,
                  total: int | None = None, progress: bool = False) -> None:
    """Classify items with one in-process classifier, streaming them into the writer."""
    rows: list[dict] = []
    with tqdm(total=total, unit="file", disable=not progress) as bar:
        for row in classify_items(classifier, items, top_k):
            rows.append(row)
            bar.update()
            if len(rows) == ROW_GROUP_ROWS:
                writer.write(results_table(rows))
                rows = []
        writer.write(results_table(rows))


def predict_ray(model_dir: str | Path, items: Iterable[Item], writer: ShardWriter, top_k: int | None = 5,
                concurrency: int | None = None, threads: int = 1, address: str | None = None,
                progress: bool = False, **classifier_options) -> None:
    """Classify items with a pool of Ray actors, each loading the model once, streaming the results into the writer.

    Items are written to a temporary file beside OUT as they are read (only the byte range of each RAY_BLOCK_ROWS
    of them is kept), and each actor reads the ranges it is handed: on a cluster that file, like the audio and the
    model, must be on storage the workers share. The results come back to this process in input order and are
    written here, so OUT needs no shared storage. `concurrency` actors (default: as many as the cluster's CPUs allow
    at `threads` CPUs each) run with `threads` torch threads each. `address` is a running cluster's; without it a
    local Ray instance is started (or the one this process already has is used).
    """
    from audioclf.infer import load_classifier

    ray = require_ray()
    # loaded here once, and dropped, so that a bad model directory or option is reported plainly, not by an actor
    load_classifier(model_dir, threads=threads, **classifier_options)
    spool, ranges = _spool_items(items, writer.out)
    try:
        if not ranges:
            return
        with _ray_session(ray, address), _ray_data_context(ray):
            if concurrency is None:
                concurrency = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
            concurrency = min(concurrency, len(ranges))  # an actor without a block of its own would only load the model
            # each block is a range of the spool file, read by the actor that takes it: reading paths is too little
            # work for tasks of its own (each one a worker process to start, and a CPU to reserve that the actors hold)
            blocks = ray.data.from_items([{"spool": str(spool), "start": start, "end": end}
                                          for start, end, _ in ranges], override_num_blocks=len(ranges))
            results = _map_actors(blocks, model_dir, top_k, concurrency, threads, batch_size=1,
                                  num_cpus=threads, classifier_options=classifier_options)
            with tqdm(total=sum(n for _, _, n in ranges), unit="file", disable=not progress) as bar:
                for table in results.iter_batches(batch_format="pyarrow", batch_size=None):
                    writer.write(table)
                    bar.update(table.num_rows)
    finally:
        spool.unlink(missing_ok=True)


def classify_dataset(dataset, model_dir: str | Path, top_k: int | None = 5, concurrency: int = 1, threads: int = 1,
                     num_cpus: float | None = None, **classifier_options):
    """A lazy `ray.data.Dataset` of result rows (path, labels, scores, error) of a dataset with a `path` column of
    audio files, or a `bytes` column of encoded audio (with `path`, if it has one, naming each row; for example
    `ray.data.read_binary_files(..., include_paths=True)`), classified by `concurrency` actors that each load the
    model directory once and run it with `threads` torch threads.

    Each actor reserves `num_cpus` (default: `threads`) CPUs. If the dataset is read from files, leave a CPU free
    for Ray's read tasks (fewer actors, or num_cpus below 1), or they wait for CPUs the actors never release.
    `classifier_options` are `load_classifier`'s (batch_size, backend, window_seconds, hop_seconds)."""
    require_ray()
    return _map_actors(dataset, model_dir, top_k, concurrency, threads, batch_size=RAY_BLOCK_ROWS,
                       num_cpus=threads if num_cpus is None else num_cpus, classifier_options=classifier_options)


def _map_actors(dataset, model_dir, top_k, concurrency: int, threads: int, batch_size: int, num_cpus: float,
                classifier_options: dict):
    import ray

    with warnings.catch_warnings():
        # Ray restarts a failed actor, and warns at every start that it could not do so where the actor's arguments
        # were lost; max_restarts=0 (Ray's own advice) fails the run with the actor's error instead. Ray >= 2.60 calls
        # such extra keywords deprecated, with no named parameter for it yet.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return dataset.map_batches(
            _ClassifyBatch,
            fn_constructor_kwargs={"model_dir": str(model_dir), "top_k": top_k, "threads": threads, **classifier_options},
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_cpus=num_cpus,
            max_restarts=0,
        )


class _ClassifyBatch:
    """A Ray actor: loads the model once, then turns each batch of paths or bytes into result rows."""

    def __init__(self, model_dir: str, top_k: int | None, threads: int, **classifier_options):
        from audioclf.infer import load_classifier

        self.classifier = load_classifier(model_dir, threads=threads, **classifier_options)
        self.top_k = top_k

    def __call__(self, batch: pa.Table) -> pa.Table:
        return results_table(list(classify_items(self.classifier, _batch_items(batch), self.top_k)))


def _batch_items(batch: pa.Table) -> Iterator[Item]:
    columns = batch.column_names
    if "spool" in columns:  # ranges of the spool file predict_ray writes
        yield from _spooled_items(batch)
        return
    if "path" not in columns and "bytes" not in columns:
        raise DataError(f"the dataset has neither a 'path' nor a 'bytes' column to classify; its columns: "
                        f"{', '.join(columns) or '(none)'}")
    paths = batch.column("path").to_pylist() if "path" in columns else [None] * batch.num_rows
    blobs = batch.column("bytes").to_pylist() if "bytes" in columns else paths
    for path, source in zip(paths, blobs):
        name = path if path is not None else describe_source(source) if source is not None else ""
        yield Item(name, source) if source is not None else Item(name, error="no audio in the row (null)")


def _spool_items(items: Iterable[Item], out: Path) -> tuple[Path, list[tuple[int, int, int]]]:
    """Items written as JSON lines to a temporary file beside OUT; returns it and the (start byte, end byte, rows)
    of each block of RAY_BLOCK_ROWS lines."""
    spool, handle = new_temp_file(out)  # a killed run's is removed by the next writer of OUT
    ranges: list[tuple[int, int, int]] = []
    try:
        with open(handle, "wb") as f:
            start, rows = 0, 0
            for item in items:
                f.write(json.dumps({"path": item.path, "error": item.error}).encode() + b"\n")
                rows += 1
                if rows == RAY_BLOCK_ROWS:
                    ranges.append((start, f.tell(), rows))
                    start, rows = f.tell(), 0
            if rows:
                ranges.append((start, f.tell(), rows))
    except BaseException:
        spool.unlink(missing_ok=True)
        raise
    return spool, ranges


def _spooled_items(batch: pa.Table) -> Iterator[Item]:
    for spool, start, end in zip(*(batch.column(c).to_pylist() for c in ("spool", "start", "end"))):
        with open(spool, "rb") as f:
            f.seek(start)
            lines = f.read(end - start).splitlines()
        for line in lines:
            row = json.loads(line)
            yield Item(row["path"], row["path"]) if row["error"] is None else Item(row["path"], error=row["error"])


def require_ray():
    """The ray module, or a ConfigError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ConfigError(f"--ray needs Ray, which is not installed: {RAY_EXTRA}") from e
    return ray


@contextlib.contextmanager
def _ray_session(ray, address: str | None):
    """Ray connected to `address`, or a local instance; one this process already has is used and left running."""
    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:  # its start-up notices (token authentication of a local cluster, ...) are about Ray, not the run
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _ray_data_context(ray):
    """Results in input order, and our progress bar instead of Ray Data's, for this run only."""
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    logger = logging.getLogger("ray.data")
    level = logger.level
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    logger.setLevel(logging.ERROR)  # Ray Data's per-run notices; its full logs stay in the Ray session folder
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        logger.setLevel(level)
