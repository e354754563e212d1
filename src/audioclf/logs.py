"""What the libraries may print. audioclf reports its own progress and results; the libraries' internal progress
bars ("Flattening the indices", "Loading weights") and warnings that name an internal setting the user never chose
say nothing to the user: the command line hides them (`hide_library_noise`, also in the processes it starts), and
keeps the warnings that can matter to a user. `quiet_libraries` is the Python API's `progress=False`: the libraries'
bars and log lines off for one call, restored after, as a library in someone else's process must.

Light at import: nothing here imports a library until `quiet_libraries` is entered.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

# Set before the libraries are imported (they read them once), and inherited by the processes `--nproc` starts.
LIBRARY_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",  # load reports of every layer: audioclf says what it loaded
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' internal steps; audioclf's own bars show the work
}

# Warnings about settings audioclf chose, not the user: each pattern is a message start (re.match).
NOISE_WARNINGS = (
    # transformers' Trainer asks DDP to look for unused parameters; with none found, torch says so once per process.
    # train tells DDP where there are none (Whisper); this catches the note where torch routes it through Python
    r"find_unused_parameters=True was specified in DDP constructor",
)


def hide_library_noise() -> None:
    """Environment defaults and warning filters for the libraries' noise (a user's own settings win)."""
    for name, value in LIBRARY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def quiet_libraries(quiet: bool) -> Iterator[None]:
    """With `quiet`, datasets' progress bars and transformers' log lines are off while the block runs."""
    if not quiet:
        yield
        return
    import datasets
    import transformers

    bars = datasets.utils.logging.is_progress_bar_enabled()
    verbosity = transformers.logging.get_verbosity()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
