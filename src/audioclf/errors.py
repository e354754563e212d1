"""Domain errors. Library code raises these; only the CLI and the server turn them into messages.

Every message says what was wrong, where (file, column, flag) and, where it helps, what would be valid. A path in a
message is written by `shown_path`.
"""

from __future__ import annotations

import os


def shown_path(path: str | os.PathLike | bytes) -> str:
    r"""A path as shown to the user, in every message and output: its text, with any bytes that are not valid UTF-8
    (which Python holds as surrogate escapes, as `os.listdir` gives them) written as \xNN, so that a terminal, JSON
    and Arrow's UTF-8 columns can always take it: the file b"bad\xffname.wav" is shown as bad\xffname.wav."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate no file system gave, such as a JSON "\ud800": shown as that escape
        return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class AudioclfError(Exception):
    """Base class of every error audioclf raises on purpose."""


class AudioLoadError(AudioclfError):
    """A clip could not be turned into samples: missing, empty, not audio, corrupt, non-finite."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class UnsupportedAudioError(AudioLoadError):
    """Not audio that audioclf reads: no format libsndfile recognises, or a sampling rate or channel count outside
    the supported range (the service answers 415)."""


class AudioTooLongError(AudioLoadError):
    """A clip is longer than the caller's limit: its header says so, or decoding passed the limit (when the header
    does not give the length, `known` is False and `seconds` is where decoding stopped)."""

    def __init__(self, source: str, seconds: float, limit_seconds: float, known: bool = True):
        self.seconds, self.limit_seconds, self.known = seconds, limit_seconds, known
        length = (f"{seconds:.1f} s long" if known else
                  f"longer than {limit_seconds:g} s (its header does not give its length; decoding stopped there)")
        super().__init__(source, f"the audio is {length}; at most {limit_seconds:g} s is accepted")


class AudioTooLargeError(AudioLoadError):
    """A clip within the length limit would still decode too many samples (frames x channels): a very high
    sampling rate or many channels, as in a decompression bomb."""


class DataError(AudioclfError):
    """A data source is unusable: missing, empty, single-label, bad manifest, unknown labels."""


class ColumnError(DataError):
    """A named column does not exist; the message lists the ones that do."""

    def __init__(self, flag: str, column: str, available: list[str], where: str):
        self.flag = flag
        self.column = column
        self.available = list(available)
        super().__init__(
            f"{flag} {column!r} is not a column of {where}; available columns: {', '.join(self.available) or '(none)'}"
        )


class ConfigError(AudioclfError):
    """A flag or config file value is invalid."""


class ModelError(AudioclfError):
    """A model cannot be found, built, loaded or used with this data."""


class HubError(AudioclfError):
    """The Hugging Face Hub cannot be used: offline, not logged in, unreachable, or it refused the request."""


class OutputError(AudioclfError):
    """An output path cannot be written: something other than a regular file or folder is there."""


class OutputExistsError(OutputError):
    """The output path exists and overwriting was not asked for."""


class OutputBusyError(OutputError):
    """Another run is writing the same output (it holds the output's lock)."""
