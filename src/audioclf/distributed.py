"""Processes: the plumbing of a run spread over several processes, so the stages read the same in one or many.

`Processes` is the group one run's processes form (torchrun, accelerate launch, `audioclf train --nproc`), with
what the stages need of it: wait for the others, let the main process go first, share out rows, gather every
process's share of them, hand out the main process's value. `launch` starts such a group on this machine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from audioclf.errors import AudioclfError, ConfigError


class Processes:
    """The processes one training run is spread over: this one alone, or those a launcher (torchrun, accelerate
    launch, `audioclf train --nproc`) started, joined into one group by accelerate's PartialState (gloo on CPUs,
    nccl on GPUs), which the Trainer then uses as it is. Process 0 is the main one."""

    def __init__(self):
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        self.count, self.index, self.is_main = state.num_processes, state.process_index, state.is_main_process

    def wait(self) -> None:
        """Return once every process has got here."""
        if self.count > 1 and torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
        elif self.count > 1:
            torch.distributed.barrier()

    @contextmanager
    def main_first(self):
        """The main process runs the block first (downloads, caches, the checks that fail), then the others, which
        find the work done. Should the main process fail, the others wait here until the launcher stops them, so
        the main process's error is the one reported."""
        if not self.is_main:
            self.wait()
        yield
        if self.is_main:
            self.wait()

    def shard(self, n_items: int) -> range:
        """This process's share of n_items, contiguous, the shares in process order."""
        return range(n_items * self.index // self.count, n_items * (self.index + 1) // self.count)

    def gather_rows(self, n_items: int, compute: Callable[[range], np.ndarray]) -> np.ndarray | None:
        """compute(rows) for this process's share of n_items rows, gathered: in the main process, every share's
        result concatenated in row order (as one process computing all the rows would give them); None in the others."""
        rows = self.shard(n_items)
        mine = compute(rows) if len(rows) else None
        if self.count == 1:
            return mine
        parts = [None] * self.count
        torch.distributed.gather_object(mine, parts if self.is_main else None, dst=0)
        if not self.is_main:
            return None
        return np.concatenate([part for part in parts if part is not None])

    def broadcast(self, value):
        """The main process's value, in every process."""
        if self.count == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def leave_processes() -> None:
    """Close this process's side of a multi-process run before it exits (a gloo group left open can abort the
    process as the interpreter shuts down, failing a run that has finished)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def under_launcher() -> bool:
    """Whether this process was started by torchrun or accelerate launch (which set these for every process)."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def launch(arguments: list[str], nproc: int, threads: int | None = None) -> int:
    """Run `audioclf ARGUMENTS` (a train command) in `nproc` processes on this machine, as `torchrun --standalone`
    does: one per GPU or, on a CPU, each with `threads` threads (default: its share of the cores). Only the main
    process writes to the console; the others' output goes to log files, kept only if one of them fails first.
    Returns the exit status of the main process."""
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s); "
                          "use one process per GPU")
    for name in list(logging.root.manager.loggerDict):  # a failed process says why; torchrun would repeat it at length
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    given = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads) if threads else given or str(max(1, cores // nproc))
    logs = Path(tempfile.mkdtemp(prefix="audioclf-train-"))
    keep_logs = False
    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc}", f"--log-dir={logs}",
                  "--redirects=" + ",".join(f"{index}:3" for index in range(1, nproc)),  # 3: stdout and stderr
                  "-m", "audioclf", *arguments])
    except ChildFailedError as e:
        index, failure = e.get_first_failure()
        if index != 0:
            keep_logs = True
            raise AudioclfError(f"--nproc {nproc}: process {index} failed first (exit status {failure.exitcode}); "
                                f"its output is under {logs}") from None
        return max(failure.exitcode, 1)
    except SignalException as e:  # Ctrl-C: the launcher has stopped the processes; the run can be --resume'd
        return 128 + int(e.sigval)
    finally:
        if given is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = given
        if not keep_logs:
            shutil.rmtree(logs, ignore_errors=True)
    return 0
