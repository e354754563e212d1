"""The bad-output corpus (issue 13: audioclf never loses or half-writes data). Each entry builds one hostile output
situation (a user's file at --csv, a link, a pipe, a device, a path under a file or in /proc, another run holding the
output, what a killed run left behind) and runs one `audioclf` command on it, and asserts its exact outcome: the
exit code, the words of its one `error:` line (or of its output, where it succeeds) and everything left on disk.

Killed runs are real processes, killed with SIGKILL: from outside where the moment can be waited for (predict,
slowed after its first clip), from inside by the step that would come next where it cannot be timed from outside
(between two renames, mid-save). Each is killed once per module, and an entry starts from a copy of what it left.
Paths that must not be written are checked with missing data or models, so an entry fails if the check comes after
the work instead of before it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

import audioclf
from audioclf import files
from audioclf.cli import app
from audioclf.testing import class_clip, make_folder_dataset, save_tone_model, write_clip

runner = CliRunner()
SOURCE = str(Path(audioclf.__file__).resolve().parents[1])  # this tree's audioclf, for the processes started here
RATE = 16_000  # Hz, the tiny model's rate
TRAIN = ["--model-config", "tiny-wav2vec2", "--epochs", "2", "--batch-size", "4", "--threads", "1", "-q"]
CSV_HEADER = "path,label,score,error\n"


# --- what is left on disk -------------------------------------------------------------------------------------------

DIR, LINK, PIPE, ANY, GONE = "<folder>", "<link>", "<pipe>", "<anything>", "<gone>"


@dataclasses.dataclass(frozen=True)
class Starts:
    """A file whose text starts with this."""
    text: str


def _what(path: Path) -> str:
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return LINK
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISFIFO(mode):
        return PIPE
    return path.read_text()


def _assert_left(root: Path, left: dict[str, object]) -> None:
    """Every name at the top of root matches one key of `left` (fnmatch patterns allowed) and each key one name; a key
    with a slash is a path under root checked on its own."""
    names = sorted(os.listdir(root))
    top = {key: value for key, value in left.items() if "/" not in key}
    for key in top:
        assert any(fnmatch.fnmatchcase(name, key) for name in names), f"{key} is not in {root}: {names}"
    for name in names:
        keys = [key for key in top if fnmatch.fnmatchcase(name, key)]
        assert keys, f"{name} is left in {root} (only {sorted(top)} should be)"
        _assert_is(root / name, top[keys[0]])
    for key, value in left.items():
        if "/" in key:
            _assert_is(root / key, value)


def _assert_is(path: Path, expected: object) -> None:
    if expected is GONE:
        assert not os.path.lexists(path), f"{path} should be gone"
    elif expected is ANY:
        assert os.path.lexists(path), f"{path} should be there"
    elif isinstance(expected, Starts):
        assert _what(path).startswith(expected.text), f"{path}: {_what(path)[:200]!r}"
    else:
        assert _what(path) == expected, f"{path}: {_what(path)[:200]!r} != {expected!r}"


# --- the processes that get killed ------------------------------------------------------------------------------------

KILLED_AT = """
    # audioclf ARGS, killed (SIGKILL, by itself) at MOMENT: python -c KILLED_AT MOMENT ARGS...
    import os, signal, sys, time
    from pathlib import Path

    from audioclf import files

    moment, *arguments = sys.argv[1:]
    output = Path(arguments[arguments.index("--output") + 1]).name if "--output" in arguments else None


    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


    if moment == "between-the-renames":  # no renameat2: the old model stepped aside, the new one not yet in place
        files._exchange = lambda a, b: False
        rename = os.rename
        files.os.rename = lambda a, b: (killed() if Path(b).name == output and str(a).endswith(files.TEMP_SUFFIX)
                                        else rename(a, b))
    elif moment == "after-the-swap":  # renameat2 swapped old and new models; the old one not yet removed
        exchange = files._exchange
        files._exchange = lambda a, b: exchange(a, b) and killed()
    elif moment == "before-the-install":  # the model finished in OUT.partial/final, not yet moved to OUT
        files.install_copy = killed
    elif moment == "mid-checkpoint":  # the second epoch's checkpoint: weights half written
        import transformers

        save = transformers.Trainer._save_optimizer_and_scheduler
        saves = []

        def cut_short(self, output_dir):
            saves.append(output_dir)
            if len(saves) == 2:
                weights = Path(output_dir) / "model.safetensors"
                weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
                killed()
            save(self, output_dir)

        transformers.Trainer._save_optimizer_and_scheduler = cut_short
    elif moment == "mid-export":  # the staging folder has its configs, the graph is being traced
        import audioclf.export

        audioclf.export._export_graph = killed
    elif moment == "after-the-first-clip":  # predict: say so and wait to be killed from outside
        import audioclf.infer

        classify = audioclf.infer.Classifier.classify_files

        def slowed(self, *args, **kwargs):
            for outcome in classify(self, *args, **kwargs):
                yield outcome
                print("classifying", flush=True)
                time.sleep(600)

        audioclf.infer.Classifier.classify_files = slowed
    elif moment == "while-training":  # train: hold OUT, leave a checkpoint in OUT.partial, wait to be killed
        import audioclf.train

        def training(bundle, featurizer, splits, window, model_opts, options, checkpoints, *rest):
            (checkpoints / "checkpoint-3").mkdir(parents=True)
            (checkpoints / "checkpoint-3" / "trainer_state.json").write_text("the first run's")
            print("training", flush=True)
            time.sleep(600)

        audioclf.train._fine_tune = training

    from audioclf.cli import main

    sys.argv = ["audioclf", *arguments]
    main()
"""
WAITING = {"after-the-first-clip": "classifying", "while-training": "training"}  # killed from outside on this line


def _environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != files.HELD_LOCKS_ENV}
    environment["PYTHONPATH"] = os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")])
    environment["HF_HUB_OFFLINE"] = "1"
    environment["OMP_NUM_THREADS"] = "1"  # several run at once on few cores
    return environment


def _start(moment: str, arguments: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_AT), moment, *arguments], cwd=cwd,
                            env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_line(process: subprocess.Popen, line: str, seconds: float = 240) -> None:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(got) for got in process.stdout] and lines.put(""), daemon=True).start()
    deadline = time.monotonic() + seconds
    try:
        while (got := lines.get(timeout=max(0.0, deadline - time.monotonic()))) != "":
            if got == line + "\n":
                return
    except queue.Empty:
        pass
    process.kill()
    raise AssertionError(f"the process never said {line!r}: {process.communicate()[1]}")


def _killed(moment: str, arguments: list[str], folder: Path) -> Path:
    """What `audioclf ARGUMENTS`, run in `folder`, leaves there when it is SIGKILLed at `moment`."""
    process = _start(moment, arguments, folder)
    if moment in WAITING:
        _wait_for_line(process, WAITING[moment])
        process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, stderr
    return folder


# --- the situations -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tone_model(tmp_path_factory.mktemp("model") / "tones", "tiny-wav2vec2")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for i, label in enumerate(["low", "high", "noise", "low"]):
        write_clip(folder / f"{label}_{i}.wav", class_clip(label, 0.5, RATE, seed=i), RATE)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 labels x 6 clips: 12 training clips, 3 steps of 4 per epoch (checkpoint-3, checkpoint-6, ...)."""
    return make_folder_dataset(tmp_path_factory.mktemp("data"), clips_per_label=6, seconds=0.5, sampling_rate=8000)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, model_dir, clips, data) -> dict[str, Path]:
    """Real runs SIGKILLed at each moment, three at a time; name -> the folder each left."""
    root = tmp_path_factory.mktemp("killed")
    train = ["train", "--data", str(data), *TRAIN, "--output", "model"]
    runs = {
        "between-the-renames": (train + ["--overwrite"], True),
        "after-the-swap": (train + ["--overwrite"], True),
        "before-the-install": (train, False),
        "mid-checkpoint": (train + ["--epochs", "3"], False),
        "mid-export": (["export", "onnx", str(model_dir), "onnx"], False),
        "predict-output": (["predict", str(model_dir), str(clips), "--output", "preds", "-q"], False),
        "predict-csv": (["predict", str(model_dir), str(clips), "--csv", "preds.csv", "-q"], False),
    }
    jobs = {}
    for name, (arguments, earlier_model) in runs.items():
        folder = root / name
        folder.mkdir()
        if earlier_model:
            (folder / "model").mkdir()
            (folder / "model" / "old.txt").write_text("the earlier model")
        moment = "after-the-first-clip" if name.startswith("predict") else name
        jobs[name] = (moment, arguments, folder)
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = {name: pool.submit(_killed, *job) for name, job in jobs.items()}
        return {name: future.result() for name, future in done.items()}


@pytest.fixture(scope="module")
def holder(tmp_path_factory, data):
    """A real `audioclf train --output model` holding its output in the middle of its training, until the module
    ends; yields it and its folder."""
    folder = tmp_path_factory.mktemp("holder")
    process = _start("while-training", ["train", "--data", str(data), *TRAIN, "--output", "model"], folder)
    try:
        _wait_for_line(process, "training")
        yield process, folder
    finally:
        process.kill()
        process.wait()


@dataclasses.dataclass
class Situation:
    """What an entry's make() builds on: its own folder, the shared read-only inputs, and the killed runs' leftovers
    and the holding run, started only for the entries that ask for them."""
    root: Path
    model: Path
    clips: Path
    data: Path
    request: pytest.FixtureRequest
    pid: int | None = None  # the holder's, once asked for

    def train(self, *extra: str, data: Path | None = None, output: str = "model") -> list[str]:
        """`train` on the small data into root/OUTPUT (or an absolute OUTPUT)."""
        return ["train", "--data", str(data or self.data), *TRAIN, "--output", str(self.root / output), *extra]

    def left_by(self, name: str, *expected: str) -> None:
        """Copy what the run killed at `name` left into root, and check it left what the entry is about."""
        shutil.copytree(self.request.getfixturevalue("killed")[name], self.root, symlinks=True, dirs_exist_ok=True)
        for pattern in expected:
            assert fnmatch.filter(os.listdir(self.root), pattern), f"the killed run left no {pattern}"

    def held(self) -> Path:
        """The holding run's folder (its output is `model` there), which becomes root."""
        process, folder = self.request.getfixturevalue("holder")
        self.pid, self.root = process.pid, folder
        return folder


def _file(path: Path, text: str = "mine") -> Path:
    path.write_text(text)
    return path


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def _temp(target: str, pid: int, host: str = files._HOST_TAG) -> str:
    return f".{target}.{host}-{pid}-{'0' * 12}{files.TEMP_SUFFIX}"


def _stale(s: Situation, target: str, pid: int, host: str = files._HOST_TAG) -> str:
    (s.root / _temp(target, pid, host)).mkdir()
    (s.root / _temp(target, pid, host) / "part-00000.parquet").write_text("half")
    return _temp(target, pid, host)


def _stale_lock(s: Situation) -> None:
    """A lock file left by a `train` killed while it held the output (the OS released the lock itself)."""
    code = "import sys; from audioclf.files import OutputLock; OutputLock(sys.argv[1]).acquire(); print('held')"
    process = subprocess.Popen([sys.executable, "-c", code, str(s.root / "model")], env=_environment(),
                               stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (s.root / ".model.lock").is_file()


# --- the corpus ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hostile:
    make: Callable[[Situation], list[str]]  # builds the situation; returns the command line (audioclf ARGS)
    exit_code: int
    words: tuple[str, ...]  # in the one error line (exit 1) or the output (exit 0); {root} {model} {data} {pid}
    left: dict[str, object]  # what is left in root (see _assert_left)


HELD = "error: --output {root}/model: another training run is writing it (pid {pid} on "
HELD_AFTER = "; lock {root}/.model.lock); wait for it to end or stop it, then run again"
HELD_LEFT = {"model.partial": DIR, ".model.lock": ANY,
             "model.partial/checkpoints/checkpoint-3/trainer_state.json": "the first run's"}
FINISHED = ("error: --output {root}/model: {root}/model.partial/final holds the finished model of an earlier run, not "
            "yet moved to {root}/model; pass --resume to install it, or delete {root}/model.partial to discard it")
NEW_MODEL = {"model/metrics.json": Starts("{"), "model/model.safetensors": ANY, "model/old.txt": GONE}
OLD_MODEL = {"model": DIR, "model/old.txt": "the earlier model", "model/metrics.json": GONE}

CORPUS = {
    # 1. predict --csv never replaces what it was not asked to, and nothing but a regular file
    "csv-is-a-users-file": Hostile(
        lambda s: ["predict", str(s.model), str(s.clips), "--csv", str(_file(s.root / "preds.csv", "my notes"))],
        1, ("error: --csv {root}/preds.csv: already exists; pass --overwrite to replace it",),
        {"preds.csv": "my notes"}),
    "csv-is-a-users-file-overwrite": Hostile(
        lambda s: ["predict", str(s.model), str(s.clips), "--csv", str(_file(s.root / "preds.csv")), "--overwrite"],
        0, ("low_0.wav: low",), {"preds.csv": Starts(CSV_HEADER)}),
    "csv-is-a-link": Hostile(
        lambda s: (s.root / "link.csv").symlink_to(_file(s.root / "mine.csv"))
        or ["predict", str(s.model), str(s.clips), "--csv", str(s.root / "link.csv"), "--overwrite"],
        1, ("error: --csv {root}/link.csv: is a symbolic link (to {root}/mine.csv), not a file; audioclf does not "
            "replace links",), {"link.csv": LINK, "mine.csv": "mine"}),
    "csv-is-a-pipe": Hostile(
        lambda s: os.mkfifo(s.root / "preds.csv") or ["predict", str(s.model), str(s.clips), "--csv",
                                                      str(s.root / "preds.csv"), "--overwrite"],
        1, ("error: --csv {root}/preds.csv: is a named pipe, not a file; audioclf replaces only regular files",),
        {"preds.csv": PIPE}),
    "csv-is-a-folder": Hostile(
        lambda s: (s.root / "preds.csv").mkdir() or ["predict", str(s.model), str(s.clips), "--csv",
                                                     str(s.root / "preds.csv"), "--overwrite"],
        1, ("error: --csv {root}/preds.csv: is a folder, not a file",), {"preds.csv": DIR}),
    "csv-is-a-device": Hostile(
        lambda s: ["predict", str(s.model), str(s.clips), "--csv", os.devnull, "--overwrite"],
        1, (f"error: --csv {os.devnull}: is a character device, not a file",), {}),
    "overwrite-without-a-file-to-replace": Hostile(
        lambda s: ["predict", str(s.model), str(s.clips), "--overwrite"],
        1, ("error: --overwrite: only with --output OUT or --csv FILE",), {}),

    # 5. one training run per output
    "train-while-another-run-holds-the-output": Hostile(
        lambda s: s.held() and s.train(), 1, (HELD, HELD_AFTER), HELD_LEFT),
    "resume-while-another-run-holds-the-output": Hostile(
        lambda s: s.held() and s.train("--resume"), 1, (HELD, HELD_AFTER), HELD_LEFT),
    "nproc-while-another-run-holds-the-output": Hostile(
        lambda s: s.held() and s.train("--nproc", "2"), 1, (HELD, HELD_AFTER), HELD_LEFT),
    "lock-left-by-a-killed-run": Hostile(
        lambda s: _stale_lock(s) or s.train(), 0, ("model saved to {root}/model",),
        {"model": DIR, "model/model.safetensors": ANY}),

    # 6. --overwrite killed mid-swap, and a finished model left in OUT.partial
    "killed-between-the-renames-then-train": Hostile(
        lambda s: s.left_by("between-the-renames", ".model.*.old", ".model.*.tmp", "model.partial") or s.train(),
        1, ("error: --output {root}/model: already exists; pass --overwrite to replace it",),
        {**OLD_MODEL, "model.partial": DIR, "model.partial/final/model.safetensors": ANY}),
    "killed-between-the-renames-then-overwrite": Hostile(
        lambda s: s.left_by("between-the-renames") or s.train("--overwrite"),
        1, (FINISHED,), {**OLD_MODEL, "model.partial": DIR}),
    "killed-between-the-renames-then-resume": Hostile(
        lambda s: s.left_by("between-the-renames") or s.train("--overwrite", "--resume"),
        0, ("--resume: {root}/model.partial/final holds the finished model of the earlier run; installing it at "
            "{root}/model", "model saved to {root}/model"), {"model": DIR, **NEW_MODEL}),
    "killed-after-the-swap-then-train": Hostile(
        lambda s: s.left_by("after-the-swap", ".model.*.tmp") or s.train(),
        1, ("error: --output {root}/model: already exists; pass --overwrite to replace it",),
        {"model": DIR, **NEW_MODEL, "model.partial": DIR}),  # the old model swapped out is removed
    "killed-before-the-install-then-train": Hostile(
        lambda s: s.left_by("before-the-install", "model.partial") or s.train(),
        1, (FINISHED,), {"model.partial": DIR, "model.partial/final/model.safetensors": ANY}),
    "killed-before-the-install-then-resume": Hostile(
        lambda s: s.left_by("before-the-install") or s.train("--resume"),
        0, ("installing it at {root}/model", "model saved to {root}/model"), {"model": DIR, **NEW_MODEL}),

    # 7. half-written checkpoints and the temporary folders of killed writers
    "killed-mid-checkpoint-then-resume": Hostile(
        lambda s: s.left_by("mid-checkpoint", "model.partial") or s.train("--epochs", "3", "--resume"),
        0, ("--resume: checkpoint-6 has no trainer_state.json (its save did not finish); removed it and resuming from "
            "checkpoint-3", "epoch 3:"), {"model": DIR, **NEW_MODEL}),
    "killed-predict-output": Hostile(
        lambda s: s.left_by("predict-output", ".preds.*.tmp")
        or ["predict", str(s.model), str(s.clips), "--output", str(s.root / "preds"), "-q"],
        0, ("4 file(s), 4 classified",), {"preds": DIR, "preds/part-00000.parquet": ANY}),
    "killed-predict-csv": Hostile(
        lambda s: s.left_by("predict-csv", ".preds.csv.*.tmp")
        or ["predict", str(s.model), str(s.clips), "--csv", str(s.root / "preds.csv"), "-q"],
        0, ("low_0.wav: low",), {"preds.csv": Starts(CSV_HEADER)}),
    "killed-export": Hostile(
        lambda s: s.left_by("mid-export", ".onnx.*.tmp") or ["export", "onnx", str(s.model), str(s.root / "onnx")],
        0, ("exported to {root}/onnx",), {"onnx": DIR, "onnx/model.onnx": ANY}),
    "a-live-writers-temporary-folder-is-kept": Hostile(
        lambda s: _stale(s, "preds", os.getpid())
        and ["predict", str(s.model), str(s.clips), "--output", str(s.root / "preds"), "-q"],
        0, ("4 file(s), 4 classified",), {"preds": DIR, _temp("preds", os.getpid()): DIR}),
    "another-machines-temporary-folder-is-kept": Hostile(
        lambda s: _stale(s, "preds", 1, host="0badc0de")
        and ["predict", str(s.model), str(s.clips), "--output", str(s.root / "preds"), "-q"],
        0, ("4 file(s), 4 classified",), {"preds": DIR, _temp("preds", 1, "0badc0de"): DIR}),

    # 11. every output checked before the work: missing data or models below would be the error otherwise
    "train-output-under-a-file": Hostile(
        lambda s: _file(s.root / "notes.txt") and s.train(data=s.root / "no-data", output="notes.txt/model"),
        1, ("error: --output {root}/notes.txt/model: {root}/notes.txt is a file, not a folder",), {"notes.txt": "mine"}),
    "train-output-in-proc": Hostile(
        lambda s: s.train(data=s.root / "no-data", output="/proc/audioclf-test/model"),
        1, ("error: --output /proc/audioclf-test/model: cannot write in /proc (No such file or directory)",), {}),
    "train-output-in-sys": Hostile(
        lambda s: s.train(data=s.root / "no-data", output="/sys/audioclf-test"),
        1, ("error: --output /sys/audioclf-test: cannot write in /sys (Permission denied)",), {}),
    "train-output-is-a-pipe": Hostile(
        lambda s: os.mkfifo(s.root / "model") or s.train(data=s.root / "no-data", output="model"),
        1, ("error: --output {root}/model: is a named pipe, not a file or folder",), {"model": PIPE}),
    "report-dir-is-a-file": Hostile(
        lambda s: ["evaluate", str(s.model), "--data", str(s.root / "no-data"), "--report-dir",
                   str(_file(s.root / "report"))],
        1, ("error: --report-dir {root}/report: is a file, not a folder; give a folder (it is created if missing)",),
        {"report": "mine"}),
    "report-dir-under-a-file": Hostile(
        lambda s: ["evaluate", str(s.model), "--data", str(s.root / "no-data"), "--report-dir",
                   str(_file(s.root / "notes.txt") / "report")],
        1, ("error: --report-dir {root}/notes.txt/report: {root}/notes.txt is a file, not a folder",),
        {"notes.txt": "mine"}),
    "report-dir-in-proc": Hostile(
        lambda s: ["evaluate", str(s.model), "--data", str(s.root / "no-data"), "--report-dir", "/proc/audioclf-test"],
        1, ("error: --report-dir /proc/audioclf-test: cannot write in /proc (No such file or directory)",), {}),
    "report-file-is-a-link": Hostile(
        lambda s: (s.root / "report").mkdir() or (s.root / "report" / "metrics.json").symlink_to(_file(s.root / "mine"))
        or ["evaluate", str(s.model), "--data", str(s.root / "no-data"), "--report-dir", str(s.root / "report")],
        1, ("error: --report-dir {root}/report/metrics.json: is a symbolic link (to {root}/mine)",),
        {"report": DIR, "report/metrics.json": LINK, "mine": "mine"}),
    "csv-under-a-file": Hostile(
        lambda s: ["predict", str(s.root / "no-model"), str(s.clips), "--csv",
                   str(_file(s.root / "notes.txt") / "preds.csv")],
        1, ("error: --csv {root}/notes.txt/preds.csv: {root}/notes.txt is a file, not a folder",), {"notes.txt": "mine"}),
    "csv-in-sys": Hostile(
        lambda s: ["predict", str(s.root / "no-model"), str(s.clips), "--csv", "/sys/preds.csv"],
        1, ("error: --csv /sys/preds.csv: cannot write in /sys (Permission denied)",), {}),
    "output-under-a-file": Hostile(
        lambda s: ["predict", str(s.root / "no-model"), str(s.clips), "--output",
                   str(_file(s.root / "notes.txt") / "preds")],
        1, ("error: --output {root}/notes.txt/preds: {root}/notes.txt is a file, not a folder",), {"notes.txt": "mine"}),
    "output-in-proc": Hostile(
        lambda s: ["predict", str(s.root / "no-model"), str(s.clips), "--output", "/proc/audioclf-test/preds"],
        1, ("error: --output /proc/audioclf-test/preds: cannot write in /proc (No such file or directory)",), {}),
    "export-out-under-a-file": Hostile(
        lambda s: ["export", "onnx", str(s.root / "no-model"), str(_file(s.root / "notes.txt") / "onnx")],
        1, ("error: OUT {root}/notes.txt/onnx: {root}/notes.txt is a file, not a folder",), {"notes.txt": "mine"}),
    "export-out-exists": Hostile(
        lambda s: (s.root / "onnx").mkdir() or ["export", "onnx", str(s.root / "no-model"), str(s.root / "onnx")],
        1, ("error: OUT {root}/onnx: already exists; pass --overwrite to replace it",), {"onnx": DIR}),
    "export-out-in-sys": Hostile(
        lambda s: ["export", "onnx", str(s.root / "no-model"), "/sys/audioclf-onnx"],
        1, ("error: OUT /sys/audioclf-onnx: cannot write in /sys (Permission denied)",), {}),
    "backbone-out-under-a-file": Hostile(  # before pip would install anything
        lambda s: ["backbone", "install", "whisper-tiny.en", str(_file(s.root / "notes.txt") / "backbone")],
        1, ("error: OUT {root}/notes.txt/backbone: {root}/notes.txt is a file, not a folder",), {"notes.txt": "mine"}),
    "backbone-out-in-proc": Hostile(
        lambda s: ["backbone", "install", "whisper-tiny.en", "/proc/audioclf-backbone"],
        1, ("error: OUT /proc/audioclf-backbone: cannot write in /proc (No such file or directory)",), {}),
}


@pytest.mark.parametrize("name", CORPUS)
def test_bad_output(name, request, tmp_path, model_dir, clips, data):
    entry = CORPUS[name]
    situation = Situation(tmp_path, model_dir, clips, data, request)
    arguments = entry.make(situation)
    values = {"root": situation.root, "model": model_dir, "data": data, "pid": situation.pid}

    result = runner.invoke(app, arguments)

    assert result.exit_code == entry.exit_code, result.output
    assert "Traceback" not in result.output, result.output
    if entry.exit_code == 0:
        for words in entry.words:
            assert words.format(**values) in result.output, result.output
    else:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        for words in entry.words:
            assert words.format(**values) in lines[0], lines[0]
    _assert_left(situation.root, {key.format(**values): value for key, value in entry.left.items()})
