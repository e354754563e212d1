"""Domain errors. Library code raises these; only the CLI and the server turn them into messages.

Every message says what was wrong, where (file, column, flag) and, where it helps, what would be valid.
"""


class AudioclfError(Exception):
    """Base class of every error audioclf raises on purpose."""


class AudioLoadError(AudioclfError):
    """A clip could not be turned into samples: missing, empty, not audio, corrupt, non-finite."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


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


class OutputError(AudioclfError):
    """An output path cannot be written: something other than a regular file or folder is there."""


class OutputExistsError(OutputError):
    """The output path exists and overwriting was not asked for."""


class OutputBusyError(OutputError):
    """Another run is writing the same output (it holds the output's lock)."""
