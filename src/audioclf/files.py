"""Files: the names of what audioclf writes, where its own folders are, and the one way it writes anything.

Every file and folder audioclf writes is built at a temporary path beside its target (the same folder, so the final
rename cannot cross file systems) and renamed into place once complete: a reader sees the old version or the new
one, never half of either, and a failed write leaves the target as it was and no temporary path behind. New files
and folders get the mode any new file gets under the umask, not mkstemp's owner-only 0600. Only regular files and
folders are ever replaced; a symbolic link, device, pipe or socket at the target is an OutputError.

Standard library only, so every stage (and the CLI, before it imports anything heavy) can use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import sys
import uuid
from pathlib import Path
from typing import IO, Any

from audioclf.errors import OutputError, OutputExistsError

# --- the files of a model directory ------------------------------------------------------------------

MODEL_CONFIG_FILE = "config.json"  # transformers' model config: architecture and label maps
PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"  # transformers' feature extractor: sampling rate, window
TRAIN_CONFIG_FILE = "train_config.json"  # the resolved data, model and training options of the run
METRICS_FILE = "metrics.json"  # training metrics in a model directory, the whole report in an evaluation folder
LABELS_FILE = "labels.txt"  # one label per line, in label-id order
ONNX_MODEL_FILE = "model.onnx"  # the exported graph
EXPORT_RECORD_FILE = "onnx_export.json"  # what was exported and how it was checked
CONFUSION_PLOT_FILE = "confusion.png"
MISCLASSIFIED_FILE = "misclassified.csv"
PREDICTIONS_FILE = "predictions.jsonl"  # an evaluation's every clip: path, true label, every label's score

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


# --- writing --------------------------------------------------------------------------------------------

TEMP_SUFFIX = ".tmp"  # a file or folder being built
ASIDE_SUFFIX = ".old"  # a replaced folder on its way out, where the OS cannot swap two paths in one step
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


class AtomicFile:
    """A new version of the file at `path`: written at a temporary path beside it, renamed onto `path` by commit(),
    or removed by discard() leaving `path` as it was. The parent folders are created.

    As a context manager it yields the open file and commits when the block ends without an error:

        with AtomicFile(path, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    Text modes default to UTF-8.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None):
        if mode not in ("w", "wb"):
            raise ValueError(f"AtomicFile mode {mode!r}: must be 'w' or 'wb'")
        self.path = Path(path)
        check_replaceable(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
            os.replace(self.temp, self.path)
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
    created. Where `target` exists, it is replaced only with overwrite=True; otherwise OutputExistsError.

    As a context manager it yields the staging folder and commits when the block ends without an error:

        with AtomicDirectory(out, overwrite=True) as staging:
            (staging / "part-00000.jsonl").write_text(...)
    """

    def __init__(self, target: str | os.PathLike, overwrite: bool = False):
        self.target = Path(target)
        self.overwrite = overwrite
        check_replaceable(self.target, folder=True)
        if os.path.lexists(self.target) and not overwrite:
            raise OutputExistsError(f"{self.target} already exists; pass --overwrite to replace it")
        self.target.parent.mkdir(parents=True, exist_ok=True)
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

    An existing `target` (a regular folder or file) is replaced only with overwrite=True, else OutputExistsError.
    The swap leaves the old or the new version at `target`, never neither: on Linux both trade places in one step
    (renameat2 RENAME_EXCHANGE); elsewhere the old one steps aside, the new one takes its name, and the old one
    comes back if that fails. The old version is deleted once the new one is in place.
    """
    built, target = Path(built), Path(target)
    check_replaceable(target, folder=True)
    if not os.path.lexists(target):
        os.rename(built, target)
        return target
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


# --- helpers --------------------------------------------------------------------------------------------

_AT_FDCWD = -100  # linux/fcntl.h: paths relative to the working directory
_RENAME_EXCHANGE = 2  # linux/fs.h: swap the two paths
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
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NOT_SUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _unused_name(target: Path, suffix: str) -> Path:
    # hidden, and unique per process and call, so concurrent writers of one target never share a temporary path
    return target.with_name(f".{target.name[:_NAME_KEPT]}.{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}")


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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"
