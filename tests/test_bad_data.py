"""The bad-data corpus (issue 13: duplicates, damaged models, nonsense options, skipped clips, link loops): each entry
makes one hostile input under tmp_path (a data source, a model directory, a command line) and runs the real command,
asserting its exact outcome: the exit code, the one-line error or the summary printed, what was skipped and what was
(not) written. Never a traceback.

An entry is a function of (tmp_path, model_dir) that builds its input and returns an `Expect`; model_dir is a tiny
tone model (labels low, high, noise) shared by the module. Hostile audio files themselves are tests/test_bad_inputs.py's.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audioclf.cli import app
from audioclf.config import DataSpec
from audioclf.data import load_clips
from audioclf.testing import class_clip, make_folder_dataset, make_manifest_dataset, save_tone_model, write_clip

runner = CliRunner()
RATE = 8000
TINY_TRAIN = ["--model-config", "tiny-wav2vec2", "--epochs", "1", "--batch-size", "4", "--threads", "1", "-q"]
DAMAGED_HINT = "copy the model directory again, or train it again"
NOT_READABLE = "not a readable audio file (Format not recognised.)"


@dataclasses.dataclass
class Expect:
    argv: list[str]
    exit_code: int = 0
    error: str | None = None  # the one line on stderr after "error: "
    lines: tuple[str, ...] = ()  # lines printed one after the other (stdout, else stderr): a summary
    problems: list[dict] | None = None  # the `problems` of the JSON on stdout, or of `problems_file`
    problems_file: Path | None = None
    not_written: tuple[Path, ...] = ()  # outputs a refusal must not leave behind
    check: Callable[[object], None] | None = None  # anything else, given the result


def _tones(root: Path, labels=("low", "high"), per_label: int = 4) -> Path:
    return make_folder_dataset(root, labels=labels, clips_per_label=per_label, seconds=0.5, sampling_rate=RATE)


def _real(path: Path) -> str:
    return str(Path(path).resolve())


def _summary(problems: list[dict], kinds: str, listed_in: str) -> tuple[str, ...]:
    lines = [f"skipped {len(problems)} clip(s) ({kinds}); all are listed in {listed_in}"]
    lines += [f"  {p['path']}: {p['reason']}" for p in problems[:3]]
    return tuple(lines + ([f"  ... and {len(problems) - 3} more"] if len(problems) > 3 else []))


def _labels_are(expected: dict[str, int]):
    def check(result):
        assert json.loads(result.stdout)["labels"] == expected
    return check


def _scored(n: int):
    def check(result):
        assert json.loads(result.stdout)["n"] == n
    return check


# --- duplicates ------------------------------------------------------------------------------------------------


def manifest_every_row_twice(tmp, model_dir):
    manifest = make_manifest_dataset(tmp / "m", labels=("low", "high"), clips_per_label=6, seconds=0.5)
    rows = list(csv.DictReader(manifest.open()))
    with manifest.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerows(rows)
    out = tmp / "model"
    problems = [{"path": _real(manifest.parent / row["path"]),
                 "reason": "duplicate audio (the clip is listed more than once; it is kept once)"} for row in rows]

    def check(result):
        clips = load_clips(DataSpec(str(manifest)), progress=False)
        train, test = ({a["path"] for a in clips.splits[s].with_format(None)["audio"]} for s in ("train", "test"))
        assert not train & test and len(train | test) == 12  # before: 5 of 9 test clips were also training clips
        assert json.loads((out / "metrics.json").read_text())["test"]["n"] == len(test)

    return Expect(["train", "--data", str(manifest), "--output", str(out), *TINY_TRAIN],
                  lines=_summary(problems, "12 duplicate audio", f"{out}/metrics.json (problems)"),
                  problems=problems, problems_file=out / "metrics.json", check=check)


def _one_file_two_labels(tmp) -> tuple[Path, str, str]:
    folder = _tones(tmp / "data")
    shutil.copy(folder / "low" / "g0_000.wav", folder / "high" / "same.wav")
    return folder, _real(folder / "high" / "same.wav"), _real(folder / "low" / "g0_000.wav")


CONFLICT = "conflicting labels (the same audio is labelled 'high' and 'low'; all 2 copies are left out)"


def one_file_two_labels(tmp, model_dir):
    folder, in_high, in_low = _one_file_two_labels(tmp)
    return Expect(["data", "inspect", str(folder), "--json"],
                  problems=[{"path": in_high, "reason": CONFLICT}, {"path": in_low, "reason": CONFLICT}],
                  check=_labels_are({"high": 4, "low": 3}))


def one_file_two_labels_strict(tmp, model_dir):
    folder, in_high, _ = _one_file_two_labels(tmp)
    return Expect(["train", "--data", str(folder), "--output", str(tmp / "model"), "--strict", *TINY_TRAIN],
                  exit_code=1, error=f"{in_high}: {CONFLICT}", not_written=(tmp / "model",))


def a_copy_under_another_name(tmp, model_dir):
    folder = _tones(tmp / "data")
    shutil.copy(folder / "low" / "g0_000.wav", folder / "low" / "zz_copy.wav")
    kept = _real(folder / "low" / "g0_000.wav")
    return Expect(["data", "inspect", str(folder), "--json"],
                  problems=[{"path": _real(folder / "low" / "zz_copy.wav"),
                             "reason": f"duplicate audio (the same as {kept}, which is kept)"}])


# --- damaged model directories, through every door that loads one ----------------------------------------------


def _truncated(tmp, model_dir) -> tuple[Path, str]:
    model = Path(shutil.copytree(model_dir, tmp / "truncated"))
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    return model, (f"{weights}: truncated or corrupt weights (Error while deserializing header: incomplete metadata, "
                   f"file not fully covered); {DAMAGED_HINT}")


def _relabelled(tmp, model_dir) -> tuple[Path, str]:
    model = Path(shutil.copytree(model_dir, tmp / "relabelled"))
    config = json.loads((model / "config.json").read_text())
    names = ["low", "high", "noise", "hum"]
    config.update(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    (model / "config.json").write_text(json.dumps(config))
    return model, (f"{model}/config.json: id2label names 4 labels but the classifier head in model.safetensors "
                   f"(classifier.weight) has 3 outputs; the label maps and the weights must agree: restore "
                   f"config.json, or train the model again")


def _door(door: str, model: Path, tmp: Path) -> Expect:
    clip = write_clip(tmp / "clip.wav", class_clip("low", 0.5, 16000), 16000)
    data = str(tmp / "no-data-here")  # the model is refused before the data is looked at
    argv = {"evaluate": ["evaluate", str(model), "--data", data],
            "predict": ["predict", str(model), str(clip)],
            "export-onnx": ["export", "onnx", str(model), str(tmp / "onnx")],
            "serve": ["serve", str(model), "--port", "8765"],
            "train": ["train", "--data", data, "--model", str(model), "--output", str(tmp / "out"), "-q"]}[door]
    return Expect(argv, exit_code=1, not_written=(tmp / "onnx", tmp / "out"))


def _damaged(make, door):
    def entry(tmp, model_dir):
        model, message = make(tmp, model_dir)
        return dataclasses.replace(_door(door, model, tmp), error=message)
    return entry


# --- nonsense options, refused before any work -----------------------------------------------------------------


def _refused(argv_tail: list[str], message: str, command: str = "train", config: str | None = None):
    def entry(tmp, model_dir):
        data = str(tmp / "no-data-here")  # were the option checked after the data, this would be the error
        out = tmp / "out"
        argv = {"train": ["train", "--data", data, "--model-config", "tiny-wav2vec2", "--output", str(out)],
                "evaluate": ["evaluate", str(model_dir), "--data", data],
                "predict": ["predict", str(tmp / "no-model"), "clip.wav"],
                "serve": ["serve", str(tmp / "no-model")]}[command]
        if config is not None:
            (tmp / "opts.yaml").write_text(config)
            argv += ["--config", str(tmp / "opts.yaml")]
        return Expect([*argv, *argv_tail], exit_code=1, error=message, not_written=(out,))
    return entry


# --- clips left out are said, not only dropped -----------------------------------------------------------------


def train_lists_missing_and_unreadable_clips(tmp, model_dir):
    manifest = make_manifest_dataset(tmp / "m", labels=("low", "high"), clips_per_label=5, seconds=0.5)
    (manifest.parent / "clips" / "notes.wav").write_text("meeting notes, not audio\n")
    with manifest.open("a", newline="") as f:
        csv.writer(f).writerows([["clips/gone.wav", "low", "spk0"], ["clips/notes.wav", "high", "spk1"]])
    out = tmp / "model"
    problems = [{"path": _real(manifest.parent / "clips" / "gone.wav"), "reason": "file not found"},
                {"path": _real(manifest.parent / "clips" / "notes.wav"), "reason": NOT_READABLE}]
    return Expect(["train", "--data", str(manifest), "--output", str(out), *TINY_TRAIN],
                  lines=_summary(problems, "1 file not found, 1 not a readable audio file",
                                 f"{out}/metrics.json (problems)"),
                  problems=problems, problems_file=out / "metrics.json")


def train_lists_clips_outside_label_folders(tmp, model_dir):
    folder = _tones(tmp / "data")
    write_clip(folder / "stray.wav", class_clip("low", 0.5, RATE), RATE)
    out = tmp / "model"
    problems = [{"path": _real(folder / "stray.wav"), "reason": "not inside a label subfolder, so it has no label"}]
    return Expect(["train", "--data", str(folder), "--output", str(out), *TINY_TRAIN],
                  lines=_summary(problems, "1 not inside a label subfolder", f"{out}/metrics.json (problems)"),
                  problems=problems, problems_file=out / "metrics.json")


def evaluate_lists_skipped_clips(tmp, model_dir):
    folder = _tones(tmp / "data", labels=("low", "high", "noise"), per_label=2)
    (folder / "noise" / "notes.wav").write_text("meeting notes, not audio\n")
    shutil.copy(folder / "low" / "g0_000.wav", folder / "low" / "zz_copy.wav")
    write_clip(folder / "stray.wav", class_clip("low", 0.5, RATE), RATE)
    problems = [{"path": _real(folder / "stray.wav"), "reason": "not inside a label subfolder, so it has no label"},
                {"path": _real(folder / "noise" / "notes.wav"), "reason": NOT_READABLE},
                {"path": _real(folder / "low" / "zz_copy.wav"),
                 "reason": f"duplicate audio (the same as {_real(folder / 'low' / 'g0_000.wav')}, which is kept)"}]
    return Expect(["evaluate", str(model_dir), "--data", str(folder), "--json", "-q"], problems=problems,
                  lines=_summary(problems, "1 not inside a label subfolder, 1 not a readable audio file, "
                                           "1 duplicate audio", "the report's problems (--json or --report-dir)"),
                  check=_scored(6))


# --- links that lead back up the tree --------------------------------------------------------------------------


def _looping_tree(root: Path, labels=("a",)) -> list[str]:
    """Six clips in each of LABEL/, LABEL/x/ and LABEL/x/y/, and a link from LABEL/x/y/up back to LABEL/x."""
    made = []
    for label in labels:
        for depth, folder in enumerate((root / label, root / label / "x", root / label / "x" / "y")):
            for i in range(6):
                seed = 100 * labels.index(label) + 10 * depth + i
                made.append(str(write_clip(folder / f"c{i}.wav", class_clip("low", 0.25, RATE, seed=seed), RATE)))
        (root / label / "x" / "y" / "up").symlink_to("..")
    return made


def predict_glob_through_a_link_loop(tmp, model_dir):
    made = _looping_tree(tmp / "clips")
    out = tmp / "preds"

    def check(result):
        rows = [json.loads(line) for line in (out / "part-00000.jsonl").read_text().splitlines()]
        assert sorted(row["path"] for row in rows) == sorted(made)  # 978 rows for these 18 files, before

    return Expect(["predict", str(model_dir), "--input", str(tmp / "clips" / "**" / "*.wav"), "--output", str(out),
                   "--format", "jsonl", "-q"],
                  lines=(f"18 file(s), 18 classified, 0 unreadable: 1 jsonl shard(s) in {out}",), check=check)


def predict_folder_with_a_link_loop(tmp, model_dir):
    made = _looping_tree(tmp / "clips")

    def check(result):
        assert sorted(json.loads(line)["path"] for line in result.stdout.splitlines()) == sorted(made)

    return Expect(["predict", str(model_dir), str(tmp / "clips"), "--json"], check=check)


def label_folders_with_link_loops(tmp, model_dir):
    _looping_tree(tmp / "data", labels=("low", "high"))
    return Expect(["data", "inspect", str(tmp / "data"), "--json"], problems=[],
                  check=_labels_are({"high": 18, "low": 18}))


CORPUS: dict[str, Callable[[Path, Path], Expect]] = {
    "manifest-every-row-twice": manifest_every_row_twice,
    "one-file-two-labels": one_file_two_labels,
    "one-file-two-labels-strict": one_file_two_labels_strict,
    "a-copy-under-another-name": a_copy_under_another_name,
    **{f"truncated-safetensors-{door}": _damaged(_truncated, door)
       for door in ("evaluate", "predict", "export-onnx", "serve", "train")},
    # train --model DIR sizes a new head for the data's labels, so the checkpoint's own label count does not matter
    **{f"id2label-count-edited-{door}": _damaged(_relabelled, door)
       for door in ("evaluate", "predict", "export-onnx", "serve")},
    "learning-rate-nan": _refused(["--learning-rate", "nan"],
                                  "--learning-rate nan: not a finite number; must be positive and at most 1"),
    "epochs-0": _refused(["--epochs", "0"], "--epochs 0: must be positive"),
    "batch-size-0": _refused(["--batch-size", "0"], "--batch-size 0: must be 1 or more"),
    "gradient-accumulation-steps-0": _refused(["--gradient-accumulation-steps", "0"],
                                              "--gradient-accumulation-steps 0: must be 1 or more"),
    "max-seconds-nan": _refused(["--max-seconds", "nan"], "--max-seconds nan: not a finite number; must be positive "
                                                          "(seconds)"),
    "warmup-ratio-1": _refused(["--warmup-ratio", "1"], "--warmup-ratio 1: must be in [0, 1) (a share of the updates)"),
    "seed-negative": _refused(["--seed", "-1"], "--seed -1: must be from 0 to 4294967295"),
    "test-size-1": _refused(["--test-size", "1"], "--test-size 1: must be in (0, 1) (a fraction of the clips)"),
    "config-file-epochs-0": _refused([], "--epochs 0: must be positive", config="train:\n  epochs: 0\n"),
    "config-file-learning-rate-inf": _refused([], "--learning-rate inf: not a finite number; must be positive and at "
                                                  "most 1", config="learning_rate: .inf\n"),
    "evaluate-seed-too-large": _refused(["--seed", str(2**32)], "--seed 4294967296: must be from 0 to 4294967295",
                                        command="evaluate"),
    "predict-hop-seconds-nan": _refused(["--hop-seconds", "nan"], "--hop-seconds nan: not a finite number; must be "
                                                                  "positive", command="predict"),
    "serve-max-wait-ms-nan": _refused(["--max-wait-ms", "nan"], "--max-wait-ms nan: not a finite number; must be 0 or "
                                                                "more", command="serve"),
    "serve-cors-origin-with-a-path": _refused(["--cors-origin", "https://example.org/app"], "--cors-origin "
                                              "'https://example.org/app': must be * or an origin, a scheme and host "
                                              "such as https://example.org or http://localhost:8080, with no path",
                                              command="serve"),
    "train-lists-missing-and-unreadable-clips": train_lists_missing_and_unreadable_clips,
    "train-lists-clips-outside-label-folders": train_lists_clips_outside_label_folders,
    "evaluate-lists-skipped-clips": evaluate_lists_skipped_clips,
    "predict-glob-through-a-link-loop": predict_glob_through_a_link_loop,
    "predict-folder-with-a-link-loop": predict_folder_with_a_link_loop,
    "label-folders-with-link-loops": label_folders_with_link_loops,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tone_model(tmp_path_factory.mktemp("model") / "tones")


def _has_block(text: str, block: tuple[str, ...]) -> bool:
    lines = text.splitlines()
    return any(lines[i:i + len(block)] == list(block) for i in range(len(lines) - len(block) + 1))


@pytest.mark.parametrize("name", CORPUS)
def test_bad_data(name, tmp_path, model_dir):
    expect = CORPUS[name](tmp_path, model_dir)

    result = runner.invoke(app, expect.argv)

    everything = result.stdout + result.stderr
    assert "Traceback" not in everything
    assert result.exception is None or isinstance(result.exception, SystemExit), everything
    assert result.exit_code == expect.exit_code, everything
    if expect.error is not None:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert errors == [f"error: {expect.error}"], result.stderr
        assert result.stderr.strip().splitlines()[-1] == errors[0]
    if expect.lines:
        assert _has_block(result.stdout, expect.lines) or _has_block(result.stderr, expect.lines), everything
    if expect.problems is not None:
        written = expect.problems_file.read_text() if expect.problems_file else result.stdout
        assert json.loads(written)["problems"] == expect.problems
    for path in expect.not_written:
        assert not os.path.lexists(path)
    if expect.check is not None:
        expect.check(result)
