"""logs.py: the command line hides the libraries' internal progress bars and warnings about settings the user never
chose, in its own process and the processes it starts, and keeps warnings that matter."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

from audioclf.logs import LIBRARY_ENVIRONMENT, hide_library_noise
from audioclf.testing import make_manifest_dataset

# torch's own text (torch/csrc/distributed/c10d/reducer.cpp), which transformers' Trainer makes every DDP run print
DDP_NOTE = ("find_unused_parameters=True was specified in DDP constructor, but did not find any unused parameters in "
            "the forward pass. This flag results in an extra traversal of the autograd graph every iteration,  which "
            "can adversely affect performance.")


def test_noise_is_hidden_and_real_warnings_are_kept(monkeypatch):
    for name in LIBRARY_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # the user's own setting

    with warnings.catch_warnings(record=True) as shown:
        hide_library_noise()
        warnings.warn(DDP_NOTE, UserWarning)
        warnings.warn("clip 3 is shorter than the window", UserWarning)

    assert [str(w.message) for w in shown] == ["clip 3 is shorter than the window"]
    assert all(os.environ[name] == value for name, value in LIBRARY_ENVIRONMENT.items()
               if name != "TRANSFORMERS_VERBOSITY")
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"


def _train(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    manifest = make_manifest_dataset(tmp_path / "data", clips_per_label=6, seconds=0.5)
    return subprocess.run([sys.executable, "-m", "audioclf", "train", "--data", str(manifest), "--model-config",
                           "tiny-wav2vec2", "--epochs", "1", "--threads", "1", "--output", str(tmp_path / "m"), *flags],
                          capture_output=True, text=True, timeout=300)


def test_quiet_train_prints_its_results_and_nothing_else(tmp_path):
    done = _train(tmp_path, "-q")

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith("data: 3 labels;") and lines[-1].startswith(f"model saved to {tmp_path / 'm'} (")
    assert [line.split(":")[0] for line in lines[-3:-1]] == ["validation", "test"]


def test_train_without_quiet_shows_its_own_progress_not_the_libraries(tmp_path):
    done = _train(tmp_path)

    assert done.returncode == 0, done.stderr
    assert "Flattening the indices" not in done.stderr  # datasets' internal step
    assert "evaluating" in done.stderr  # audioclf's own bar for the test clips
