"""Files: the names of what audioclf writes, where its own folders are, the one way it walks folders for audio (each
folder and each file once, links and all) and the one way it writes anything.

Every file and folder audioclf writes is built at a temporary path beside its target (the same folder, so the final
rename cannot cross file systems) and renamed into place once complete: a reader sees the old version or the new
one, never half of either, and a failed write leaves the target as it was and no temporary path behind. New files
and folders get the mode any new file gets under the umask, not mkstemp's owner-only 0600. Only regular files and
folders are ever replaced; a symbolic link, device, pipe or socket at the target is an OutputError.

A writer killed mid-write leaves its temporary path (`.NAME.<host>-<pid>-<hex>.tmp`) behind; the next writer of the
same target removes those of processes that are no longer running (clean_stale). Every output is checked before the
work that fills it starts (check_writable_output), and a training run holds an OutputLock on its output.

Standard library only, so every stage (and the CLI, before it imports anything heavy) can use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import fnmatch
import glob
import json
import os
import re
import shutil
import socket
import stat
import sys
import uuid
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from audioclf.errors import OutputBusyError, OutputError, OutputExistsError

try:
    import fcntl
except ImportError:  # not POSIX: training runs go unlocked
    fcntl = None

# --- the files of a model directory ------------------------------------------------------------------

MODEL_CONFIG_FILE = "config.json"  # transformers' model config: architecture and label maps
PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"  # transformers' feature extractor: sampling rate, window
TRAIN_CONFIG_FILE = "train_config.json"  # the resolved data, model and training options of the run
METRICS_FILE = "metrics.json"  # training metrics in a model directory, the whole report in an evaluation folder
LABELS_FILE = "labels.txt"  # one label per line, in label-id order
ONNX_MODEL_FILE = "model.onnx"  # the exported graph
EXPORT_RECORD_FILE = "onnx_export.json"  # what was exported and how it was checked
CARD_FILE = "README.md"  # the model card, in the Hugging Face Hub's format (audioclf.card)
CONFUSION_PLOT_FILE = "confusion.png"
MISCLASSIFIED_FILE = "misclassified.csv"
PREDICTIONS_FILE = "predictions.jsonl"  # an evaluation's every clip: path, true label, every label's score
REPORT_FILES = (METRICS_FILE, CONFUSION_PLOT_FILE, MISCLASSIFIED_FILE, PREDICTIONS_FILE)  # evaluate --report-dir

# --- audioclf's own folders ----------------------------------------------------------------------------

HOME_ENV = "AUDIOCLF_HOME"


def home() -> Path:
    """audioclf's own folder (caches, installed backbones): $AUDIOCLF_HOME, else $XDG_CACHE_HOME/audioclf, else
    ~/.cache/audioclf. Not created here."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "audioclf"


def home_folder(*names: str) -> Path:
    """A named folder under home(), e.g. home_folder("cache", "features"). Not created here."""
    return home().joinpath(*names)


# --- reading folders ------------------------------------------------------------------------------------


def find_files(pattern: str) -> Iterator[str]:
    """The files a glob matches, as `glob.iglob(pattern, recursive=True)` gives them, lazily: `**` is any number of
    folders, and a name that starts with "." is matched only by a part of the pattern that starts with one. Files
    here are anything but folders (broken links and pipes too, for whoever reads them to report). Unlike glob, no
    folder is read twice for the same part of the pattern, so a link back up the tree is not followed round and
    round, and each file is given once, however many links lead to it. Each folder is read in name order."""
    parts = pattern.split(os.sep)
    first = next((i for i, part in enumerate(parts) if glob.has_magic(part)), None)
    if first is None:  # no pattern at all: the path itself, if it is there
        if os.path.lexists(pattern) and not os.path.isdir(pattern):
            yield pattern
        return
    if parts[-1] == "":  # `dir/**/` matches folders only
        return
    base = os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else "")
    rest: list[str] = []
    for part in parts[first:]:
        if part and not (part == "**" and rest[-1:] == ["**"]):  # `a//b` is `a/b`, `**/**` is `**`
            rest.append(part)
    visited: set[tuple[int, int, int]] = set()
    _first_visit(base or os.curdir, len(rest), visited)
    yield from _matches(base, rest, visited, set())


def files_under(folder: str | os.PathLike) -> Iterator[str]:
    """Every file at any depth under `folder`, names that start with "." left out, each once, as `find_files` gives
    them (`folder/**/*`, with `folder` taken literally, not as a pattern)."""
    folder = str(Path(folder))
    visited: set[tuple[int, int, int]] = set()
    _first_visit(folder, 2, visited)
    return _matches("" if folder == os.curdir else folder, ["**", "*"], visited, set())  # `.`: as rglob names them


def _matches(folder: str, rest: list[str], visited: set, seen_files: set) -> Iterator[str]:
    part, more = rest[0], rest[1:]
    if part == "**":
        if more:  # no folder at all
            yield from _matches(folder, more, visited, seen_files)
        for name in _names(folder, hidden=False):
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                if _first_visit(path, len(rest), visited):
                    yield from _matches(path, rest, visited, seen_files)
            elif not more:
                yield from _once(path, seen_files)
        return
    if glob.has_magic(part):
        names = fnmatch.filter(_names(folder, hidden=part.startswith(".")), part)
    else:
        names = [part] if os.path.lexists(os.path.join(folder, part)) else []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isdir(path):
            if not more:
                yield from _once(path, seen_files)
        elif more and _first_visit(path, len(more), visited):
            yield from _matches(path, more, visited, seen_files)


def _names(folder: str, hidden: bool) -> list[str]:
    try:
        names = sorted(os.listdir(folder or os.curdir))
    except OSError:  # unreadable or gone: as glob, nothing there
        return []
    return names if hidden else [name for name in names if not name.startswith(".")]


def _first_visit(folder: str, state: int, visited: set) -> bool:
    """Whether this folder (by device and inode, wherever links made it appear) is new for this part of a pattern."""
    try:
        found = os.stat(folder)
    except OSError:
        return False
    key = (found.st_dev, found.st_ino, state)
    if key in visited:
        return False
    visited.add(key)
    return True


def _once(path: str, seen_files: set) -> Iterator[str]:
    try:
        found = os.stat(path)
    except OSError:  # a broken link or a loop of links: itself
        try:
            found = os.lstat(path)
        except OSError:
            return
    key = (found.st_dev, found.st_ino)
    if key not in seen_files:
        seen_files.add(key)
        yield path


# --- writing --------------------------------------------------------------------------------------------

TEMP_SUFFIX = ".tmp"  # a file or folder being built
ASIDE_SUFFIX = ".old"  # a replaced folder on its way out, where the OS cannot swap two paths in one step
LOCK_SUFFIX = ".lock"  # beside an output while a training run holds it
_NAME_KEPT = 200  # characters of the target's name kept in a temporary name, which must stay under 255 bytes
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def check_replaceable(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Raise OutputError where something is at `path` that audioclf must not replace: anything but a regular file
    (or, with folder=True, a regular file or a folder). A symbolic link is refused, not followed: replacing it
    would silently cut the link, and writing through it would land outside the folder asked for."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) or (folder and stat.S_ISDIR(mode)):
        return
    wanted = "a file or folder" if folder else "a file"
    if stat.S_ISLNK(mode):
        raise OutputError(f"{path}: is a symbolic link (to {os.readlink(path)}), not {wanted}; audioclf does not "
                          f"replace links: give the link's target or another path")
    raise OutputError(f"{path}: is {_kind(mode)}, not {wanted}; audioclf replaces only regular files"
                      f"{' and folders' if folder else ''}; give another path")


OUTPUT_KINDS = ("file", "folder", "into")


def check_writable_output(path: str | os.PathLike, flag: str, kind: str = "file", *, overwrite: bool = True,
                          inside: tuple[str, ...] = ()) -> Path:
    """Raise OutputError, its message starting with `flag` and `path`, where an output could not be written at
    `path`, so that a command fails before its work rather than after it. Returns `path`.

    kind "file": a file replaced whole (AtomicFile); "folder": a folder replaced whole (AtomicDirectory); "into": a
    folder, created where missing, into which the files named in `inside` are written (evaluate --report-dir).
    Refused: what check_replaceable refuses (for "into": anything but a folder, or a named file that is not a
    regular one); an existing file or folder without `overwrite`; a path under something that is not a folder; a
    folder where no file can be created (read-only, /proc, no permission), which is tried, not guessed from the mode
    bits (root may write where they say no, and a read-only mount refuses even root). Only looks: nothing is left.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"check_writable_output kind {kind!r}: must be one of {', '.join(OUTPUT_KINDS)}")
    path = Path(path)
    where = f"{flag} {path}"
    try:
        mode = os.stat(path).st_mode if kind == "into" else os.lstat(path).st_mode  # a linked report folder is fine
    except (FileNotFoundError, NotADirectoryError):  # a parent that is not a folder is named below
        mode = None
    except OSError as e:
        raise OutputError(f"{where}: cannot be looked at ({e.strerror})") from None
    if mode is not None and kind == "into":
        if not stat.S_ISDIR(mode):
            raise OutputError(f"{where}: is {_kind(mode)}, not a folder; give a folder (it is created if missing)")
        for name in inside:
            try:
                check_replaceable(path / name)
            except OutputError as e:
                raise OutputError(f"{flag} {e}") from None
    elif mode is not None:
        try:
            check_replaceable(path, folder=kind == "folder")
        except OutputError as e:
            raise OutputError(f"{flag} {e}") from None
        if not overwrite:
            raise OutputExistsError(f"{where}: already exists; pass --overwrite to replace it")
    # where the first missing folder (or the output, or its staging path) will be created
    folder, child = (path, None) if mode is not None and kind == "into" else (path.parent, path.name)
    while True:
        try:
            folder_mode = os.stat(folder).st_mode
            break
        except (FileNotFoundError, NotADirectoryError):
            if folder.parent == folder:
                raise OutputError(f"{where}: cannot be created (no folder above it exists)") from None
            folder, child = folder.parent, folder.name
        except OSError as e:
            raise OutputError(f"{where}: cannot look at {folder} ({e.strerror})") from None
    if not stat.S_ISDIR(folder_mode):
        raise OutputError(f"{where}: {folder} is {_kind(folder_mode)}, not a folder")
    try:
        temp, descriptor = _new_temp_file(folder / (child or "audioclf-probe"))
        os.close(descriptor)
        os.unlink(temp)
    except OSError as e:
        raise OutputError(f"{where}: cannot write in {folder} ({e.strerror})") from None
    return path


class AtomicFile:
    """A new version of the file at `path`: written at a temporary path beside it, renamed onto `path` by commit(),
    or removed by discard() leaving `path` as it was. The parent folders are created.

    As a context manager it yields the open file and commits when the block ends without an error:

        with AtomicFile(path, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    Text modes default to UTF-8. With overwrite=False an existing file is an OutputExistsError, here and at commit()
    (one that appeared while the file was written is not replaced either). What dead writers of `path` left beside
    it is removed first (clean_stale).
    """

    def __init__(self, path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None, overwrite: bool = True):
        if mode not in ("w", "wb"):
            raise ValueError(f"AtomicFile mode {mode!r}: must be 'w' or 'wb'")
        self.path = Path(path)
        self.overwrite = overwrite
        check_replaceable(self.path)
        if not overwrite and os.path.lexists(self.path):
            raise OutputExistsError(f"{self.path} already exists; pass --overwrite to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.path)
        self.temp, descriptor = _new_temp_file(self.path)
        try:
            self.file: IO = open(descriptor, mode, encoding=encoding or (None if "b" in mode else "utf-8"),
                                 newline=newline)
        except BaseException:
            os.close(descriptor)
            self.temp.unlink(missing_ok=True)
            raise
        self._done = False

    def commit(self) -> Path:
        """Put the written file in place of `path` and return `path`; on any failure, discard it and re-raise."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())  # the data is on disk before the name points at it, even after a crash
            self.file.close()
            check_replaceable(self.path)  # again: something may have taken the name while the file was written
            if self.overwrite:
                os.replace(self.temp, self.path)
            else:
                try:
                    _move_no_replace(self.temp, self.path)
                except FileExistsError:
                    raise OutputExistsError(f"{self.path} already exists; pass --overwrite to replace it") from None
        except BaseException:
            self.discard()
            raise
        self._done = True
        return self.path

    def discard(self) -> None:
        """Remove the temporary file; `path` stays as it was. Does nothing after commit()."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):  # a failed flush while closing does not matter: the file goes
            self.file.close()
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> IO:
        return self.file

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` whole or not at all; returns `path`."""
    with AtomicFile(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8, newlines as given) to `path` whole or not at all; returns `path`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write `value` as indented JSON with a final newline to `path` whole or not at all; returns `path`."""
    return write_text(path, json.dumps(value, indent=2) + "\n")


class AtomicDirectory:
    """A new version of the folder `target`: built in a staging folder beside it (`path`), put in place of `target`
    by commit() (see install_directory), or removed by discard() leaving `target` as it was. The parent folders are
    created. Where `target` exists, it is replaced only with overwrite=True; otherwise OutputExistsError. What dead
    writers of `target` left beside it is cleaned first (clean_stale), which may put a replaced folder back.

    As a context manager it yields the staging folder and commits when the block ends without an error:

        with AtomicDirectory(out, overwrite=True) as staging:
            (staging / "part-00000.jsonl").write_text(...)
    """

    def __init__(self, target: str | os.PathLike, overwrite: bool = False):
        self.target = Path(target)
        self.overwrite = overwrite
        check_replaceable(self.target, folder=True)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.target)
        if os.path.lexists(self.target) and not overwrite:
            raise OutputExistsError(f"{self.target} already exists; pass --overwrite to replace it")
        self.path = _new_temp_folder(self.target)
        self._done = False

    def commit(self) -> Path:
        """Put the staging folder in place of `target` and return `target`; on any failure, discard it and
        re-raise, `target` as it was."""
        try:
            install_directory(self.path, self.target, overwrite=self.overwrite)
        except BaseException:
            self.discard()
            raise
        self._done = True
        return self.target

    def discard(self) -> None:
        """Remove the staging folder; `target` stays as it was. Does nothing after commit()."""
        if not self._done:
            self._done = True
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def install_directory(built: str | os.PathLike, target: str | os.PathLike, overwrite: bool = False) -> Path:
    """Move the finished folder `built` (on the same file system) to `target` and return `target`.

    An existing `target` (a regular folder or file) is replaced only with overwrite=True, else OutputExistsError
    (also where one appears at the last moment: the rename does not replace). Where the OS can swap two paths in one
    step (Linux's renameat2 RENAME_EXCHANGE, on local file systems), the old or the new version is at `target` at
    every instant, and a process killed after the swap leaves the old version at `built`'s temporary name, which the
    next writer removes. Elsewhere (other OSes, NFS) the old one steps aside to `.NAME.<host>-<pid>-<hex>.old`, the
    new one takes its name, and the old one comes back if that fails; killed between those two renames, `target`
    is missing until the next writer of it (clean_stale) puts the old version back. The old version is deleted
    once the new one is in place.
    """
    built, target = Path(built), Path(target)
    check_replaceable(target, folder=True)
    if not os.path.lexists(target):
        try:
            _move_no_replace(built, target)
            return target
        except FileExistsError:
            if not overwrite:
                raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it") from None
            check_replaceable(target, folder=True)  # what appeared at the last moment
    if not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    if _exchange(built, target):
        _remove(built)  # which now holds the old version
        return target
    aside = _unused_name(target, ASIDE_SUFFIX)
    os.rename(target, aside)
    try:
        os.rename(built, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _remove(aside)
    return target


def install_copy(source: str | os.PathLike, target: str | os.PathLike, overwrite: bool = False) -> Path:
    """Put a copy of the finished folder `source` at `target` (as AtomicDirectory does) and return `target`;
    `source` stays as it is. The copy's files are hard links to source's where the file system allows (no data is
    copied), so a run killed at any moment leaves `source` whole until `target` holds the same files (same_files).
    """
    source = Path(source)
    with AtomicDirectory(target, overwrite=overwrite) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True, copy_function=_link_or_copy)
    return Path(target)


def same_files(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether every file under the folder `a` is also at the same place under `b`, as the same file (a hard link)
    or with the same bytes. True for an empty `a`."""
    import filecmp

    a, b = Path(a), Path(b)
    for path in a.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            continue
        other = b / path.relative_to(a)
        try:
            if not (os.path.samefile(path, other) or filecmp.cmp(path, other, shallow=False)):
                return False
        except OSError:
            return False
    return True


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Clean what writers of `target` that were killed left beside it, and return what was cleaned: their temporary
    files and folders (`.NAME.<host>-<pid>-<hex>.tmp`) are removed; a folder one had moved aside to replace
    (`.NAME.<host>-<pid>-<hex>.old`) is put back where nothing is at `target` (killed between install_directory's
    two renames), else removed. Only those of processes on this machine that are no longer running: a live
    writer's, or another machine's on a shared file system, are left alone."""
    target = Path(target)
    prefix = f".{target.name[:_NAME_KEPT]}."
    found = []
    try:
        with os.scandir(target.parent) as entries:
            for entry in entries:
                match = entry.name.startswith(prefix) and _TEMP_NAME.fullmatch(entry.name[len(prefix):])
                if match and match["host"] in (None, _HOST_TAG) and not _alive(int(match["pid"])):
                    found.append((match["suffix"], Path(entry.path)))
    except OSError:  # no folder, no leftovers
        return []
    cleaned = []
    # an old version first, newest first: put back the newest where the target is missing
    for suffix, path in sorted(found, key=lambda item: (item[0] != ASIDE_SUFFIX, -_mtime(item[1]))):
        if suffix == ASIDE_SUFFIX and len(target.name) <= _NAME_KEPT and not os.path.lexists(target):
            try:
                _move_no_replace(path, target)
                cleaned.append(path)
                continue
            except FileExistsError:  # another writer got there first: this old version is not needed
                pass
            except OSError:  # not put back, and the target is missing: keep it
                continue
        _remove(path)
        cleaned.append(path)
    return cleaned


# --- one training run per output ------------------------------------------------------------------------

HELD_LOCKS_ENV = "AUDIOCLF_HELD_LOCKS"  # the locks this process holds, so the processes it starts share them


class OutputLock:
    """An exclusive claim on the output `target` while a run writes it: an flock on `.NAME.lock` beside it, which
    the OS releases when the process ends in any way, so a killed run leaves no lock behind. A second claim, from
    any process on any machine sharing the file system (where it supports locks), is an OutputBusyError naming the
    holder (pid, host, start, command line), written into the lock file.

    The processes started while it is held (`audioclf train --nproc` starting its N) inherit the claim: the lock's
    path is in $AUDIOCLF_HELD_LOCKS, and claiming a lock listed there is a no-op. The file is removed on release;
    one left by a killed run is simply locked again by the next. Where the OS or file system has no locks, runs go
    unlocked.

        with OutputLock(out, "--output", "training run"):
            ...
    """

    def __init__(self, target: str | os.PathLike, flag: str = "--output", what: str = "run"):
        self.target = Path(target)
        self.path = self.target.with_name(f".{self.target.name[:_NAME_KEPT]}{LOCK_SUFFIX}")
        self.flag, self.what = flag, what
        self._descriptor: int | None = None
        self._key = os.path.abspath(self.path)

    def acquire(self) -> OutputLock:
        if fcntl is None or self._key in _held_locks():
            return self
        where = f"{self.flag} {self.target}"
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{where}: cannot create {self.target.parent} ({e.strerror})") from None
        while True:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as e:
                raise OutputError(f"{where}: cannot create the lock file {self.path} ({e.strerror})") from None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(descriptor)
                os.close(descriptor)
                raise OutputBusyError(f"{where}: another {self.what} is writing it ({holder}; lock {self.path}); "
                                      "wait for it to end or stop it, then run again") from None
            except OSError as e:
                os.close(descriptor)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    return self  # a file system without locks
                raise
            try:  # the holder we waited on may have removed the file: then lock the one at the path now
                if os.path.samestat(os.fstat(descriptor), os.stat(self.path)):
                    break
            except FileNotFoundError:
                pass
            os.close(descriptor)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command()[:_COMMAND_KEPT],
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(descriptor, 0)
        os.write(descriptor, (json.dumps(record) + "\n").encode("utf-8"))
        self._descriptor = descriptor
        os.environ[HELD_LOCKS_ENV] = os.pathsep.join([*_held_locks(), self._key])
        return self

    def release(self) -> None:
        if self._descriptor is None:
            return
        held = [key for key in _held_locks() if key != self._key]
        if held:
            os.environ[HELD_LOCKS_ENV] = os.pathsep.join(held)
        else:
            os.environ.pop(HELD_LOCKS_ENV, None)
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # before the unlock: whoever then locks this file finds it gone and tries again
        os.close(self._descriptor)
        self._descriptor = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, kind, error, traceback) -> None:
        self.release()


# --- helpers --------------------------------------------------------------------------------------------

_AT_FDCWD = -100  # linux/fcntl.h: paths relative to the working directory
_RENAME_NOREPLACE = 1  # linux/fs.h: fail rather than replace the destination
_RENAME_EXCHANGE = 2  # linux/fs.h: swap the two paths
_COMMAND_KEPT = 200  # characters of a lock holder's command line kept in its lock file
# what follows `.NAME.` in a temporary name: host tag (absent in names of earlier versions), pid, random, suffix
_TEMP_NAME = re.compile(r"(?:(?P<host>[0-9a-f]{8})-)?(?P<pid>[0-9]+)-[0-9a-f]{12}(?P<suffix>\.tmp|\.old)")
_HOST_TAG = f"{zlib.crc32(socket.gethostname().encode('utf-8', 'replace')):08x}"  # whose pids these are
_NOT_SUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _renameat2():
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap what a and b name in one step; False where this OS or file system cannot."""
    return _renameat2_with(a, b, _RENAME_EXCHANGE)


def _renameat2_with(a: Path, b: Path, flags: int) -> bool:
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NOT_SUPPORTED:
        return False
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), str(b))
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _move_no_replace(source: Path, target: Path) -> None:
    """Rename source to target, or FileExistsError where something is at target, in one step where the OS can
    (renameat2 RENAME_NOREPLACE), else after a look (a race then remains)."""
    if _renameat2_with(source, target, _RENAME_NOREPLACE):
        return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def _unused_name(target: Path, suffix: str) -> Path:
    # hidden, and unique per process and call, so concurrent writers of one target never share a temporary path;
    # the host and pid say whose it is, so that the next writer can tell a dead writer's leftovers (clean_stale)
    return target.with_name(f".{target.name[:_NAME_KEPT]}.{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}")


def new_temp_file(target: str | os.PathLike) -> tuple[Path, int]:
    """A new empty file at a temporary path beside `target` and its open descriptor (write only): for work files
    that are not the output itself (a spool of inputs). clean_stale removes it once its writer has died."""
    return _new_temp_file(Path(target))


def _new_temp_file(target: Path) -> tuple[Path, int]:
    while True:
        temp = _unused_name(target, TEMP_SUFFIX)
        try:
            return temp, os.open(temp, _NEW_FILE_FLAGS, 0o666)  # 0o666 less the umask, as open() gives a new file
        except FileExistsError:
            continue


def _new_temp_folder(target: Path) -> Path:
    while True:
        temp = _unused_name(target, TEMP_SUFFIX)
        try:
            temp.mkdir(0o777)  # less the umask, as any new folder
            return temp
        except FileExistsError:
            continue


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # a file system without hard links, or a link count at its limit
        shutil.copy2(source, destination)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none, or a number no pid can be
        return False
    except PermissionError:  # another user's
        return True
    return True


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _held_locks() -> list[str]:
    return [key for key in os.environ.get(HELD_LOCKS_ENV, "").split(os.pathsep) if key]


def _command() -> str:
    """This process's command line as its user typed it, more or less: `audioclf train ...`, `python -m audioclf
    train ...`."""
    if not sys.argv or not sys.argv[0]:
        return "python"
    program = Path(sys.argv[0])
    name = f"python -m {program.parent.name}" if program.name == "__main__.py" else program.name
    return " ".join([name, *sys.argv[1:]])


def _holder(descriptor: int) -> str:
    """Who holds a lock, from what it wrote into the lock file."""
    try:
        record = json.loads(os.pread(descriptor, 4096, 0).decode("utf-8"))
        return (f"pid {record['pid']} on {record['host']}, started {record['started']}: "
                f"{record['command']}")
    except (OSError, ValueError, KeyError, TypeError):  # just locked, not yet written
        return "its process did not say which"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"
