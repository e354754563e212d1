import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import audioclf
from audioclf import files
from audioclf.errors import OutputBusyError, OutputError, OutputExistsError
from audioclf.files import (
    AtomicDirectory,
    AtomicFile,
    OutputLock,
    check_replaceable,
    check_writable_output,
    clean_stale,
    install_copy,
    install_directory,
    same_files,
    write_bytes,
    write_json,
    write_text,
)

SOURCE = str(Path(audioclf.__file__).resolve().parents[1])  # this tree's audioclf, for the processes tests start


def _python(script: str, *args: str, drop_env: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in drop_env}
    environment["PYTHONPATH"] = os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=environment,
                          capture_output=True, text=True, timeout=60)


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    return int(_python("import os; print(os.getpid())").stdout)


def _temp_name(target: str, pid: int, suffix: str = files.TEMP_SUFFIX, host: str | None = files._HOST_TAG) -> str:
    return f".{target}.{host + '-' if host else ''}{pid}-{'0' * 12}{suffix}"


@contextlib.contextmanager
def _umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _folder(path: Path, contents: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in contents.items():
        (path / name).write_text(text)
    return path


# --- files --------------------------------------------------------------------------------------


def test_write_text_and_json_write_the_whole_file_and_leave_nothing_else(tmp_path):
    assert write_text(tmp_path / "labels.txt", "yes\nnö\n") == tmp_path / "labels.txt"
    write_json(tmp_path / "metrics.json", {"accuracy": 0.5, "labels": ["a", "b"]})
    assert write_bytes(tmp_path / "model.bin", b"\x00\x01") == tmp_path / "model.bin"
    assert (tmp_path / "model.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "labels.txt").read_bytes() == "yes\nnö\n".encode("utf-8")
    assert (tmp_path / "metrics.json").read_text() == '{\n  "accuracy": 0.5,\n  "labels": [\n    "a",\n    "b"\n  ]\n}\n'
    assert _names(tmp_path) == ["labels.txt", "metrics.json", "model.bin"]


def test_a_failure_mid_write_leaves_the_target_unchanged_and_no_temporary_file(tmp_path):
    target = tmp_path / "rows.csv"
    target.write_text("old,rows\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with AtomicFile(target, "w", newline="") as f:
            f.write("new,")
            f.flush()
            assert target.read_text() == "old,rows\n"  # the half-written rows are not at the target
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old,rows\n"
    assert _names(tmp_path) == ["rows.csv"]


def test_a_failure_while_committing_leaves_the_target_unchanged_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "features.npy"
    target.write_bytes(b"old")

    def full_disk(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_text(target, "new")
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["features.npy"]


def test_streamed_rows_appear_only_on_commit_and_discard_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.csv"
    output = AtomicFile(target, "w", newline="")
    output.file.write("path,label\n")
    output.file.write("a.wav,yes\n")
    assert not target.exists()
    assert output.commit() == target
    assert target.read_text() == "path,label\na.wav,yes\n"

    again = AtomicFile(target, "w")
    again.file.write("partial")
    again.discard()
    again.discard()  # twice is harmless
    assert target.read_text() == "path,label\na.wav,yes\n"
    assert _names(tmp_path) == ["out.csv"]


def test_the_parent_folders_are_created(tmp_path):
    write_text(tmp_path / "a" / "b" / "c.txt", "x")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "x"


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_files_and_folders_get_the_mode_the_umask_gives(tmp_path, mask):
    with _umask(mask):
        write_text(tmp_path / "atomic.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
        with AtomicDirectory(tmp_path / "atomic") as staging:
            (staging / "f").write_text("x")
        (tmp_path / "plain").mkdir()
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == 0o666 & ~mask
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == 0o777 & ~mask
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


# --- folders ------------------------------------------------------------------------------------


def test_a_directory_appears_only_when_complete(tmp_path):
    target = tmp_path / "shards"
    with AtomicDirectory(target) as staging:
        (staging / "part-00000.jsonl").write_text("{}\n")
        assert not target.exists()
        assert staging.parent == tmp_path and staging.name.startswith(".shards.")
    assert _tree(target) == {"part-00000.jsonl": "{}\n"}
    assert _names(tmp_path) == ["shards"]


def test_a_failed_build_leaves_the_old_directory_and_no_staging(tmp_path):
    target = _folder(tmp_path / "model", {"config.json": "old"})
    with pytest.raises(RuntimeError):
        with AtomicDirectory(target, overwrite=True) as staging:
            (staging / "config.json").write_text("new")
            raise RuntimeError("training diverged")
    assert _tree(target) == {"config.json": "old"}
    assert _names(tmp_path) == ["model"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_replacing_a_directory_swaps_old_for_new_and_cleans_up(tmp_path, monkeypatch, exchange):
    if exchange and files._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "model", {"config.json": "old", "stale.txt": "old"})
    with AtomicDirectory(target, overwrite=True) as staging:
        (staging / "config.json").write_text("new")
    assert _tree(target) == {"config.json": "new"}
    assert _names(tmp_path) == ["model"]  # neither the staging folder nor the old version is left


def test_renameat2_swaps_without_ever_leaving_the_target_empty(tmp_path, monkeypatch):
    if files._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    target = _folder(tmp_path / "model", {"config.json": "old"})
    built = _folder(tmp_path / "built", {"config.json": "new"})
    seen = []

    def remove_old(path):  # the old version goes only after the new one is in place
        seen.append((_tree(path), _tree(target)))
        files.shutil.rmtree(path)

    monkeypatch.setattr(files.os, "rename", lambda *a: pytest.fail("the swap must not rename the target aside"))
    monkeypatch.setattr(files, "_remove", remove_old)
    install_directory(built, target, overwrite=True)
    assert seen == [({"config.json": "old"}, {"config.json": "new"})]
    assert _names(tmp_path) == ["model"]


def test_when_the_new_directory_cannot_take_the_name_the_old_one_comes_back(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "model", {"config.json": "old"})
    real_rename = os.rename

    def rename(source, destination):
        if Path(destination) == target and Path(source).name.endswith(files.TEMP_SUFFIX):
            raise OSError(errno.EIO, "Input/output error")
        real_rename(source, destination)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        with AtomicDirectory(target, overwrite=True) as staging:
            (staging / "config.json").write_text("new")
    assert _tree(target) == {"config.json": "old"}
    assert _names(tmp_path) == ["model"]


def test_a_regular_file_at_a_directory_target_is_replaced_with_overwrite(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with AtomicDirectory(target, overwrite=True) as staging:
        (staging / "part-00000.parquet").write_text("rows")
    assert _tree(target) == {"part-00000.parquet": "rows"}
    assert _names(tmp_path) == ["out"]


def test_an_existing_directory_needs_overwrite_even_when_it_appears_during_the_build(tmp_path):
    existing = _folder(tmp_path / "taken", {"f": "theirs"})
    with pytest.raises(OutputExistsError, match="taken already exists"):
        AtomicDirectory(existing)

    target = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="out already exists"):
        with AtomicDirectory(target) as staging:
            (staging / "f").write_text("ours")
            _folder(target, {"f": "another process's"})
    assert _tree(target) == {"f": "another process's"}
    assert _names(tmp_path) == ["out", "taken"]


# --- what is refused ----------------------------------------------------------------------------


def test_a_symlink_target_is_refused_and_left_alone(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("theirs")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    with pytest.raises(OutputError, match=r"link\.csv: is a symbolic link \(to .*real\.csv\)"):
        write_text(link, "ours")
    folder_link = tmp_path / "model"
    folder_link.symlink_to(_folder(tmp_path / "elsewhere", {"f": "theirs"}), target_is_directory=True)
    with pytest.raises(OutputError, match="symbolic link"):
        AtomicDirectory(folder_link, overwrite=True)
    assert link.is_symlink() and real.read_text() == "theirs"
    assert folder_link.is_symlink() and _tree(tmp_path / "elsewhere") == {"f": "theirs"}
    assert _names(tmp_path) == ["elsewhere", "link.csv", "model", "real.csv"]


def test_a_symlink_that_appears_while_writing_is_not_replaced(tmp_path):
    target = tmp_path / "out.csv"
    (tmp_path / "real.csv").write_text("theirs")
    with pytest.raises(OutputError, match="symbolic link"):
        with AtomicFile(target, "w") as f:
            f.write("ours")
            target.symlink_to(tmp_path / "real.csv")
    assert target.is_symlink() and (tmp_path / "real.csv").read_text() == "theirs"
    assert _names(tmp_path) == ["out.csv", "real.csv"]


def test_a_named_pipe_or_a_folder_is_not_a_file_to_replace(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OutputError, match="pipe: is a named pipe, not a file"):
        write_text(pipe, "x")
    with pytest.raises(OutputError, match="pipe: is a named pipe, not a file or folder"):
        AtomicDirectory(pipe, overwrite=True)
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match="folder: is a folder, not a file"):
        AtomicFile(tmp_path / "folder")
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    assert _names(tmp_path) == ["folder", "pipe"]


@pytest.mark.skipif(not (os.path.exists(os.devnull) and stat.S_ISCHR(os.lstat(os.devnull).st_mode)),
                    reason="no character device at os.devnull")
def test_a_device_node_is_refused_before_anything_is_written_beside_it():
    before = set(os.listdir(os.path.dirname(os.devnull)))
    with pytest.raises(OutputError, match="is a character device"):
        check_replaceable(os.devnull)
    with pytest.raises(OutputError, match="is a character device"):
        AtomicFile(os.devnull, "w")
    assert set(os.listdir(os.path.dirname(os.devnull))) <= before


# --- audioclf's folders -------------------------------------------------------------------------


def test_home_is_audioclf_home_then_xdg_cache_then_dot_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("AUDIOCLF_HOME", "~/audioclf-home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert files.home() == tmp_path / "user" / "audioclf-home"
    assert files.home_folder("cache", "features") == tmp_path / "user" / "audioclf-home" / "cache" / "features"

    monkeypatch.setenv("AUDIOCLF_HOME", "")  # set but empty counts as unset
    assert files.home() == tmp_path / "xdg" / "audioclf"
    assert files.home_folder("backbones", "whisper-tiny.en") == tmp_path / "xdg" / "audioclf" / "backbones" / "whisper-tiny.en"

    monkeypatch.delenv("AUDIOCLF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg-cache")
    assert files.home() == tmp_path / "user" / "xdg-cache" / "audioclf"

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert files.home() == tmp_path / "user" / ".cache" / "audioclf"
    assert not (tmp_path / "user").exists()  # resolving a folder does not create it


# --- a file that must not be replaced -------------------------------------------------------------


def test_without_overwrite_an_existing_file_is_refused_even_one_that_appears_while_writing(tmp_path):
    target = tmp_path / "preds.csv"
    target.write_text("the user's")
    with pytest.raises(OutputExistsError, match="preds.csv already exists"):
        AtomicFile(target, "w", overwrite=False)

    late = tmp_path / "late.csv"
    with pytest.raises(OutputExistsError, match="late.csv already exists"):
        with AtomicFile(late, "w", overwrite=False) as f:
            f.write("ours")
            late.write_text("written meanwhile")
    assert target.read_text() == "the user's" and late.read_text() == "written meanwhile"
    assert _names(tmp_path) == ["late.csv", "preds.csv"]


# --- checking an output before the work -----------------------------------------------------------


def test_check_writable_output_accepts_new_and_replaceable_paths_and_leaves_nothing(tmp_path):
    (tmp_path / "old.csv").write_text("x")
    (tmp_path / "report").mkdir()
    assert check_writable_output(tmp_path / "new.csv", "--csv") == tmp_path / "new.csv"
    check_writable_output(tmp_path / "old.csv", "--csv", overwrite=True)
    check_writable_output(tmp_path / "a" / "b" / "model", "--output", "folder", overwrite=False)
    check_writable_output(tmp_path / "report", "--report-dir", "into", inside=files.REPORT_FILES)
    check_writable_output(tmp_path / "new-report", "--report-dir", "into")
    assert _names(tmp_path) == ["old.csv", "report"]  # nothing created, no probe left


@pytest.mark.parametrize("make, args, message", [
    (lambda d: (d / "f").write_text("x"), ("f", "--csv", "file", {"overwrite": False}), "--csv {d}/f: already exists; pass "
                                                                         "--overwrite to replace it"),
    (lambda d: (d / "f").write_text("x"), ("f/preds.csv", "--csv", "file"), "--csv {d}/f/preds.csv: {d}/f is a "
                                                                            "file, not a folder"),
    (lambda d: (d / "f").write_text("x"), ("f/a/b", "--output", "folder"), "--output {d}/f/a/b: {d}/f is a file, "
                                                                           "not a folder"),
    (lambda d: (d / "f").write_text("x"), ("f", "--report-dir", "into"), "--report-dir {d}/f: is a file, not a "
                                                                         "folder; give a folder (it is created if "
                                                                         "missing)"),
    (lambda d: (d / "r").mkdir() or (d / "r" / "metrics.json").symlink_to(d / "x"),
     ("r", "--report-dir", "into", {"inside": files.REPORT_FILES}), "--report-dir {d}/r/metrics.json: is a symbolic "
                                                                   "link"),
    (lambda d: (d / "f").mkdir(), ("f", "--csv", "file"), "--csv {d}/f: is a folder, not a file"),
    (lambda d: os.mkfifo(d / "p"), ("p", "OUT", "folder"), "OUT {d}/p: is a named pipe, not a file or folder"),
    (lambda d: None, ("/proc/audioclf-test/preds.csv", "--csv", "file"),
     "--csv /proc/audioclf-test/preds.csv: cannot write in /proc (No such file or directory)"),
    (lambda d: None, ("/sys/audioclf-test", "--output", "folder"),
     "--output /sys/audioclf-test: cannot write in /sys (Permission denied)"),
], ids=["exists", "under-a-file", "deep-under-a-file", "into-a-file", "into-with-a-link", "file-is-a-folder",
        "pipe", "proc", "sys"])
def test_check_writable_output_refuses_in_one_line_naming_the_flag(tmp_path, make, args, message):
    make(tmp_path)
    before = _names(tmp_path)
    path, flag, kind, *options = args
    with pytest.raises(OutputError) as raised:
        check_writable_output(tmp_path / path, flag, kind, **(options[0] if options else {}))
    assert str(raised.value).startswith(message.format(d=tmp_path))
    assert "\n" not in str(raised.value)
    assert _names(tmp_path) == before


# --- what killed writers leave ----------------------------------------------------------------------


def test_stale_temporary_paths_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    target = tmp_path / "preds"
    leftovers = {
        _temp_name("preds", dead): "dead's folder",
        _temp_name("preds", dead, host=None) + "f": None,  # not a name audioclf makes
        _temp_name("preds", dead, host=None): "dead's folder, named before names had a host",
        _temp_name("preds", alive): "a live writer's",
        _temp_name("preds", dead, host="0badc0de"): "another machine's",
        _temp_name("preds.v2", dead): "another target's",
    }
    for name in leftovers:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-00000.parquet").write_text("rows")
    (tmp_path / _temp_name("preds", dead).replace(".tmp", "x.tmp")).write_text("not ours")
    kept = sorted(set(_names(tmp_path)) - {_temp_name("preds", dead), _temp_name("preds", dead, host=None)})

    assert sorted(p.name for p in clean_stale(target)) == sorted([_temp_name("preds", dead),
                                                                  _temp_name("preds", dead, host=None)])
    assert _names(tmp_path) == kept


def test_a_folder_left_aside_is_put_back_where_the_target_is_missing_else_removed(tmp_path):
    dead = _dead_pid()
    aside = _folder(tmp_path / _temp_name("model", dead, files.ASIDE_SUFFIX), {"config.json": "old"})
    built = _folder(tmp_path / _temp_name("model", dead), {"config.json": "new"})
    clean_stale(tmp_path / "model")
    assert _tree(tmp_path / "model") == {"config.json": "old"}
    assert _names(tmp_path) == ["model"]

    _folder(aside, {"config.json": "older"})
    clean_stale(tmp_path / "model")
    assert _tree(tmp_path / "model") == {"config.json": "old"}
    assert _names(tmp_path) == ["model"]
    assert not built.exists()


KILLED_WRITER = """
    import os, signal, sys
    from pathlib import Path
    from audioclf import files

    target, moment = Path(sys.argv[1]), sys.argv[2]
    def killed(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    if moment == "after-the-swap":  # renameat2 swapped old and new; the old one was not yet removed
        files._remove = killed
    elif moment == "between-the-renames":  # no renameat2: the old one stepped aside, the new one not yet in place
        files._exchange = lambda a, b: False
        rename = os.rename
        files.os.rename = lambda a, b: killed() if str(a).endswith(files.TEMP_SUFFIX) else rename(a, b)
    with files.AtomicDirectory(target, overwrite=True) as staging:
        (staging / "config.json").write_text("new")
        if moment == "while-building":
            killed()
        (staging / "model.safetensors").write_text("new weights")
"""


@pytest.mark.parametrize("moment, at_target", [
    ("after-the-swap", "new"),
    ("between-the-renames", None),  # the one moment without the target, where the OS cannot swap in one step
    ("while-building", "old"),
])
def test_a_writer_killed_mid_replace_leaves_a_state_the_next_writer_cleans(tmp_path, moment, at_target):
    if moment == "after-the-swap" and files._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    target = _folder(tmp_path / "model", {"config.json": "old", "model.safetensors": "old weights"})

    killed = _python(KILLED_WRITER, str(target), moment)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if at_target is None:
        assert not target.exists()
    else:
        assert _tree(target)["config.json"] == at_target
    assert len(_names(tmp_path)) == 2  # the target or the old version aside, and one temporary folder

    with pytest.raises(OutputExistsError):  # a later writer cleans first, then finds the target
        AtomicDirectory(target, overwrite=False)
    assert _tree(target) == ({"config.json": "new", "model.safetensors": "new weights"} if at_target == "new" else
                             {"config.json": "old", "model.safetensors": "old weights"})
    assert _names(tmp_path) == ["model"]


# --- one run per output ---------------------------------------------------------------------------

HOLDER = """
    import sys
    from audioclf.files import OutputLock

    with OutputLock(sys.argv[1], "--output", "training run"):
        print("holding", flush=True)
        sys.stdin.read()  # until the test closes it, or kills this process
"""
CLAIM = """
    import sys
    from audioclf.errors import OutputBusyError
    from audioclf.files import OutputLock

    try:
        with OutputLock(sys.argv[1], "--output", "training run"):
            print("claimed")
    except OutputBusyError as e:
        print(e)
"""


@contextlib.contextmanager
def _holder(target: Path):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(target), "extra-argument"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert process.stdout.readline() == "holding\n"
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_second_claim_on_an_output_is_refused_naming_the_holder(tmp_path):
    target = tmp_path / "model"
    with _holder(target) as holder:
        with pytest.raises(OutputBusyError) as refused:
            OutputLock(target, "--output", "training run").acquire()
        record = json.loads((tmp_path / ".model.lock").read_text())
    message = str(refused.value)
    assert message.startswith(f"--output {target}: another training run is writing it (pid {holder.pid} on ")
    assert f"started {record['started']}: -c {target} extra-argument; lock {tmp_path / '.model.lock'}); wait for it " \
           "to end or stop it, then run again" in message
    assert record["pid"] == holder.pid


def test_a_killed_holder_leaves_no_lock_and_a_released_one_no_file(tmp_path):
    target = tmp_path / "model"
    with _holder(target) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert _names(tmp_path) == [".model.lock"]  # the file stays, the lock went with the process
        with OutputLock(target):
            assert json.loads((tmp_path / ".model.lock").read_text())["pid"] == os.getpid()
    assert _names(tmp_path) == []
    with pytest.raises(RuntimeError), OutputLock(target):
        raise RuntimeError("a failed run")
    with OutputLock(target):  # released on the way out of the failure too
        pass
    assert _names(tmp_path) == []


def test_processes_started_while_a_lock_is_held_share_it_and_others_do_not(tmp_path):
    target = tmp_path / "model"
    with OutputLock(target, "--output", "training run"):
        assert _python(CLAIM, str(target)).stdout == "claimed\n"  # as `train --nproc` starts its processes
        other = _python(CLAIM, str(target), drop_env=(files.HELD_LOCKS_ENV,))  # a run started by someone else
        assert other.stdout.startswith(f"--output {target}: another training run is writing it (pid {os.getpid()}")
    assert files.HELD_LOCKS_ENV not in os.environ


# --- installing a copy --------------------------------------------------------------------------


def test_install_copy_links_the_files_and_keeps_the_source(tmp_path):
    source = _folder(tmp_path / "final", {"config.json": "new", "model.safetensors": "weights"})
    target = _folder(tmp_path / "model", {"config.json": "old"})
    assert not same_files(source, target)

    install_copy(source, target, overwrite=True)

    assert _tree(target) == _tree(source) == {"config.json": "new", "model.safetensors": "weights"}
    assert os.path.samefile(source / "model.safetensors", target / "model.safetensors")  # no data copied
    assert same_files(source, target)
    assert _names(tmp_path) == ["final", "model"]


# --- walking folders ---------------------------------------------------------------------------------------------


def _audio_tree(root: Path) -> Path:
    """x.wav, a/z.wav, a/b/w.wav, a/b/v.flac, hidden .y.wav and .h/q.wav, c/u.wav, a pipe and a broken link in c/."""
    for name in ("x.wav", ".y.wav", "a/z.wav", "a/b/w.wav", "a/b/v.flac", ".h/q.wav", "c/u.wav"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    os.mkfifo(root / "c" / "p.wav")
    (root / "c" / "broken.wav").symlink_to(root / "nowhere")
    return root


@pytest.mark.parametrize("pattern", ["**/*.wav", "*.wav", "*/*.wav", ".*", "**", "a/**/*.wav", "**/b/*", "c/*",
                                     "x.wav", "nope.wav", "a/*", "a/**", "**/"])
def test_find_files_gives_what_glob_gives_without_links(tmp_path, monkeypatch, pattern):
    import glob

    monkeypatch.chdir(_audio_tree(tmp_path))
    for given in (pattern, str(tmp_path / pattern)):
        from_glob = sorted(p for p in glob.iglob(given, recursive=True) if not os.path.isdir(p))
        assert sorted(files.find_files(given)) == from_glob


def test_links_back_up_the_tree_are_not_followed_round_and_each_file_comes_once(tmp_path):
    import glob
    import itertools

    root = _audio_tree(tmp_path / "clips")
    (root / "a" / "b" / "up").symlink_to("..")  # a loop: a/b/up/b/up/...
    (root / "a" / "b" / "top").symlink_to("../..")  # a second one; glob's paths grow exponentially with the depth
    (root / "c" / "again").symlink_to("../a")  # the same folder under another name
    (root / "c" / "alias.wav").symlink_to("u.wav")  # the same file under another name
    real = ["a/b/w.wav", "a/z.wav", "c/alias.wav", "c/broken.wav", "c/p.wav", "x.wav"]  # c/u.wav is c/alias.wav
    looping = glob.iglob(str(root / "**" / "*.wav"), recursive=True)
    assert len(list(itertools.islice(looping, 1000))) == 1000  # of 6 files, and glob has thousands more to give

    found = list(files.find_files(str(root / "**" / "*.wav")))
    under = list(files.files_under(root))

    assert sorted(os.path.relpath(p, root) for p in found) == real
    assert sorted(os.path.relpath(p, root) for p in under) == sorted([*real, "a/b/v.flac"])
    # a folder that is only reached through a link is read (once)
    linked = _audio_tree(tmp_path / "elsewhere")
    (root / "more").symlink_to(linked / "a")
    assert sorted(os.path.relpath(p, root) for p in files.find_files(str(root / "more" / "**" / "*.wav"))) == [
        "more/b/w.wav", "more/z.wav"]
