"""scale.py and `predict --output` / `--ray`: on one local Ray instance, 200 generated files (a few corrupt, one
listed but missing) classified by a pool of two actors give exactly the predictions of local `audioclf predict`,
every input once, corrupt ones with their error; the local streaming runner, `classify_dataset` on bytes and a
second process joining with --ray-address give the same rows; manifests and globs are read lazily; OUT appears
whole or not at all; without Ray, --ray says what to install."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray
from typer.testing import CliRunner

from audioclf import scale
from audioclf.cli import app
from audioclf.errors import ColumnError, DataError, OutputExistsError
from audioclf.testing import class_clip, save_tone_model, write_clip

runner = CliRunner()
LABELS = ("low", "high", "noise")
RATE = 16_000  # Hz, the tiny models' rate
N_FILES = 200
CLIP_SECONDS = (0.25, 0.3, 0.4)  # a few lengths, so that batches are planned differently by each runner
SCORE_TOLERANCE = 1e-5  # the same clip padded into a different batch moves its scores by float rounding only
CORRUPT = {  # name -> what is wrong with it, as the classifier words it
    "garbage.wav": "not a readable audio file",
    "empty.wav": "empty file",
    "truncated.wav": "truncated or corrupt audio",
    "text.wav": "not a readable audio file",
}
MISSING = "clips/never_written.wav"  # in the manifest, not on disk


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tone_model(tmp_path_factory.mktemp("model") / "model", "tiny-wav2vec2", LABELS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """N_FILES files under clips/ (and clips/more/), CORRUPT among them, and manifest.csv listing them all (paths
    relative to it) plus MISSING."""
    root = tmp_path_factory.mktemp("corpus")
    good = N_FILES - len(CORRUPT)
    rows = []
    for i in range(good):
        folder = "clips/more" if i % 5 == 0 else "clips"
        rel = f"{folder}/{LABELS[i % 3]}_{i:03d}.wav"
        write_clip(root / rel, class_clip(LABELS[i % 3], CLIP_SECONDS[i % len(CLIP_SECONDS)], RATE, seed=i), RATE)
        rows.append(rel)
    (root / "clips" / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "clips" / "empty.wav").write_bytes(b"")
    whole = write_clip(root / "clips" / "truncated.wav", class_clip("low", 0.5, RATE), RATE).read_bytes()
    (root / "clips" / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    (root / "clips" / "text.wav").write_text("path,label\nnot,audio\n")
    rows[10:10] = [f"clips/{name}" for name in CORRUPT]  # among the others, not at the end
    rows.insert(150, MISSING)
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "speaker"])
        writer.writerows([rel, f"spk{i % 4}"] for i, rel in enumerate(rows))
    return root


def _manifest_paths(corpus: Path) -> list[str]:
    with (corpus / "manifest.csv").open() as f:
        return [str(corpus / row["path"]) for row in csv.DictReader(f)]


def _rows(out: Path) -> list[dict]:
    return scale.read_results(out).to_pylist()


def _predict(*args: str):
    return runner.invoke(app, ["predict", *args])


@pytest.fixture(scope="module")
def local_predict(model_dir, corpus) -> dict[str, dict]:
    """`audioclf predict FILES --json`, as it ran before this module existed: path -> its JSON line."""
    paths = _manifest_paths(corpus)
    result = _predict(str(model_dir), *paths, "--json", "--top-k", "3")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == paths
    return {line["path"]: line for line in lines}


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_out(ray_session, model_dir, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray") / "predictions"
    result = _predict(str(model_dir), "--ray", "--concurrency", "2", "--input", str(corpus / "manifest.csv"),
                      "--output", str(out), "--top-k", "3", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{N_FILES + 1} file(s), {N_FILES - len(CORRUPT)} classified, " \
                                    f"{len(CORRUPT) + 1} unreadable: 1 parquet shard(s) in {out}"
    return out


# --- Ray against local predict ------------------------------------------------------------------


def _assert_same_as_local(rows: list[dict], local: dict[str, dict]) -> None:
    for row in rows:
        reference = local[row["path"]]
        if "error" in reference:
            assert row["labels"] is None and row["scores"] is None
            assert row["error"] == reference["error"], row["path"]
            continue
        assert row["error"] is None, row
        assert row["labels"] == [p["label"] for p in reference["predictions"]], row["path"]
        np.testing.assert_allclose(row["scores"], [p["score"] for p in reference["predictions"]],
                                   rtol=0, atol=SCORE_TOLERANCE, err_msg=row["path"])


def test_ray_rows_equal_local_predict_once_per_input_in_input_order(ray_out, local_predict, corpus):
    rows = _rows(ray_out)

    paths = _manifest_paths(corpus)
    assert Counter(row["path"] for row in rows) == Counter(paths)  # every input exactly once
    assert [row["path"] for row in rows] == paths
    _assert_same_as_local(rows, local_predict)
    assert {row["labels"][0] for row in rows if row["labels"]} == set(LABELS)  # the agreement means something


def test_ray_rows_carry_each_corrupt_files_error(ray_out, corpus):
    errors = {row["path"]: row["error"] for row in _rows(ray_out) if row["error"] is not None}

    assert set(errors) == {str(corpus / "clips" / name) for name in CORRUPT} | {str(corpus / MISSING)}
    for name, reason in CORRUPT.items():
        assert errors[str(corpus / "clips" / name)].startswith(reason)
    assert errors[str(corpus / MISSING)] == "file not found"


def test_local_streaming_predict_writes_the_same_rows(ray_out, model_dir, corpus, tmp_path):
    out = tmp_path / "local.jsonl.d"

    result = _predict(str(model_dir), "--input", str(corpus / "manifest.csv"), "--output", str(out),
                      "--format", "jsonl", "--top-k", "3", "-q")

    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["part-00000.jsonl"]
    local, distributed = _rows(out), _rows(ray_out)
    assert [row["path"] for row in local] == [row["path"] for row in distributed]
    for a, b in zip(local, distributed):
        assert (a["labels"], a["error"]) == (b["labels"], b["error"])
        if a["scores"] is not None:
            np.testing.assert_allclose(a["scores"], b["scores"], rtol=0, atol=SCORE_TOLERANCE)


def test_classify_dataset_on_bytes_read_by_ray(ray_session, model_dir, corpus, local_predict):
    dataset = ray.data.read_binary_files(str(corpus / "clips"), include_paths=True)

    # one actor: Ray's read tasks need the other CPU
    rows = scale.classify_dataset(dataset, model_dir, top_k=3, concurrency=1).take_all()

    on_disk = sorted(str(p) for p in (corpus / "clips").rglob("*.wav"))
    assert len(rows) == len(on_disk) == N_FILES
    assert sorted(row["path"] for row in rows) == on_disk
    _assert_same_as_local(rows, local_predict)


def test_cli_process_joins_a_running_cluster_with_ray_address(ray_session, model_dir, corpus, local_predict, tmp_path):
    manifest = tmp_path / "more.jsonl"  # relative to a folder of its own, in a column of another name
    clips = sorted((corpus / "clips" / "more").glob("*.wav"))
    manifest.write_text("".join(json.dumps({"file": os.path.relpath(p, tmp_path)}) + "\n" for p in clips))
    out = tmp_path / "out"

    done = subprocess.run(
        [sys.executable, "-m", "audioclf", "predict", str(model_dir), "--ray", "--ray-address",
         ray.get_runtime_context().gcs_address, "--concurrency", "1", "--input", str(manifest),
         "--audio-column", "file", "--output", str(out), "--format", "jsonl", "--top-k", "3"],
        capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no Ray start-up or actor notes: they are about Ray, not the run
    rows = _rows(out)
    assert [row["path"] for row in rows] == [str(p) for p in clips]
    _assert_same_as_local(rows, local_predict)
    assert ray.is_initialized()  # the cluster this process started is still up


def test_without_ray_the_flag_says_what_to_install(model_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError

    result = _predict(str(model_dir), "--ray", "--input", str(corpus / "manifest.csv"), "--output", str(tmp_path / "o"))

    assert result.exit_code == 1
    assert result.stderr == "error: --ray needs Ray, which is not installed: pip install 'audioclf[ray]'\n"
    assert not (tmp_path / "o").exists()


# --- inputs -------------------------------------------------------------------------------------


def test_manifest_is_read_one_row_at_a_time(tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"path": "a.wav"}\n{"file": "b.wav"}\n{"path": ""}\nnot json\n')

    items = scale.input_items(str(manifest))
    first = list(itertools.islice(items, 3))  # the broken fourth line is not read yet

    assert first == [scale.Item(str(tmp_path / "a.wav"), str(tmp_path / "a.wav")),
                     scale.Item("", error=f"{manifest} line 2: no path in column 'path'"),
                     scale.Item("", error=f"{manifest} line 3: no path in column 'path'")]
    with pytest.raises(DataError, match="line 4 is not valid JSON"):
        next(items)


def test_manifest_column_paths_resolve_against_its_folder(tmp_path, monkeypatch):
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.tsv"
    manifest.write_text("id\tfile\n1\t../clips/a.wav\n2\t/abs/b.wav\n")
    monkeypatch.chdir(tmp_path / "lists")

    paths = [item.path for item in scale.input_items("m.tsv", "file")]

    assert paths == [str(tmp_path / "clips" / "a.wav"), "/abs/b.wav"]
    assert scale.count_inputs("m.tsv", "file") == 2
    wrong_column = "--audio-column 'path' is not a column of m.tsv; available columns: id, file"
    with pytest.raises(ColumnError, match=wrong_column):
        next(scale.input_items("m.tsv"))


def test_glob_is_expanded_lazily_and_recursively(corpus, monkeypatch):
    monkeypatch.chdir(corpus)

    items = scale.input_items("clips/**/*.wav")

    assert not isinstance(items, (list, tuple))
    assert sorted(item.path for item in items) == sorted(str(p) for p in corpus.rglob("*.wav"))
    assert scale.count_inputs("clips/**/*.wav") is None  # no total without expanding it
    with pytest.raises(DataError, match="no files to classify"):
        scale.non_empty(scale.input_items("clips/*.flac"), "--input clips/*.flac")


# --- output -------------------------------------------------------------------------------------


def _table(n: int, start: int = 0):
    return scale.results_table([{"path": f"{i}.wav", "labels": ["low"], "scores": [0.5], "error": None}
                                for i in range(start, start + n)])


@pytest.mark.parametrize("format", scale.FORMATS)
def test_shards_split_at_shard_rows_and_read_back_in_order(tmp_path, monkeypatch, format):
    monkeypatch.setattr(scale, "SHARD_ROWS", 7)
    monkeypatch.setattr(scale, "ROW_GROUP_ROWS", 3)
    out = tmp_path / "out"

    with scale.ShardWriter(out, format) as writer:
        for start in range(0, 20, 4):
            writer.write(_table(4, start))

    assert sorted(p.name for p in out.iterdir()) == [f"part-0000{i}.{format}" for i in range(3)]
    assert scale.read_results(out).to_pylist() == _table(20).to_pylist()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left beside it


def test_out_appears_only_when_the_run_completes(tmp_path):
    out = tmp_path / "out"

    with pytest.raises(KeyboardInterrupt):
        with scale.ShardWriter(out) as writer:
            writer.write(_table(5))
            raise KeyboardInterrupt

    assert list(tmp_path.iterdir()) == []


def test_existing_out_is_refused_unless_overwrite(model_dir, corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    args = [str(model_dir), str(corpus / "clips" / "more"), "--output", str(out), "-q"]

    refused = _predict(*args)
    replaced = _predict(*args, "--overwrite")

    assert refused.exit_code == 1
    assert refused.stderr == f"error: --output {out}: already exists; pass --overwrite to replace it\n"
    assert replaced.exit_code == 0, replaced.output
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"]
    assert len(_rows(out)) == len(list((corpus / "clips" / "more").glob("*.wav")))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(OutputExistsError):
        scale.ShardWriter(out)


def test_nothing_classified_still_writes_the_errors_and_exits_1(model_dir, corpus, tmp_path):
    out = tmp_path / "out"

    result = _predict(str(model_dir), str(corpus / "clips" / "garbage.wav"), str(corpus / "clips" / "empty.wav"),
                      "--output", str(out), "-q")

    assert result.exit_code == 1
    assert [row["error"] is not None for row in _rows(out)] == [True, True]


@pytest.mark.parametrize("args, message", [
    (["--input", "m.csv"], "error: --input writes its rows to a folder of shards: add --output OUT"),
    (["a.wav", "--input", "m.csv", "--output", "o"],
     "error: give FILES or --input, not both (FILES: a.wav; --input m.csv)"),
    (["--input", "m.csv", "--output", "o", "--json"], "error: --json: only for printed output, not with --output"),
    (["a.wav", "--output", "o", "--concurrency", "2"], "error: --concurrency: only with --ray"),
    (["a.wav", "--output", "o", "--audio-column", "file"], "error: --audio-column: only with --input MANIFEST"),
    (["a.wav", "--output", "o", "--format", "csv"], "error: --format 'csv': must be one of parquet, jsonl"),
    (["a.wav", "--overwrite"], "error: --overwrite: only with --output OUT or --csv FILE"),
    ([], "error: no audio to classify: give FILES, or --input MANIFEST_OR_GLOB with --output OUT"),
])
def test_flag_mistakes_are_one_line_errors(model_dir, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)

    result = _predict(str(model_dir), *args)

    assert result.exit_code == 1
    assert result.stderr == message + "\n"
    assert list(tmp_path.iterdir()) == []
