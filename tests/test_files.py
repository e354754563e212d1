import contextlib
import errno
import os
import stat
from pathlib import Path

import pytest

from audioclf import files
from audioclf.errors import OutputError, OutputExistsError
from audioclf.files import (
    AtomicDirectory,
    AtomicFile,
    check_replaceable,
    install_directory,
    write_bytes,
    write_json,
    write_text,
)


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
