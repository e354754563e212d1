"""Batch inference throughput: local `audioclf predict` against Ray Data with 1 and 2 actors, side by side on the
same files and the same model.

Run by hand (not a test); needs the ray extra (pip install 'audioclf[ray]'):

    python bench/scale.py                                   # 1,000 generated clips, a whisper-tiny-shaped model
    python bench/scale.py --model audioclf-demo-model       # the demo's model (the default when ./ has it)
    python bench/scale.py --files 200 --actors 1,2,4        # a quicker look, or more actors on a bigger machine

The files are generated into a temporary folder (TONE_CLASSES clips of 0.8-1.2 s at 16 kHz). Without a model, a
tone model of --model-config is built in a second (random weights, 1 s window, nearest-centroid head: see
audioclf.testing.save_tone_model); nothing is trained. `local tN` is the in-process Classifier path that
`audioclf predict --input ... --output ...` runs, with N torch threads (--local-threads, default 1; 0 is the CLI's
default of one per core, which on a machine whose cores other processes keep busy ran 2-16 times slower than one
thread: torch's threads wait on each other). The first local run is the baseline of the ratios. `ray xN` is
`audioclf predict --ray --concurrency N`: N actors of one torch thread each, on a local Ray instance started once
before the Ray runs (a cluster is normally up already; its start is reported apart). Every run writes its rows as
Parquet and must give every file the same top label as the first.

Each run is timed end to end, from its call to OUT in place (model loads, spooling and actor starts included), and
to its first results (local: the model loaded; Ray: the first block of rows back, whose rows the rate "after first"
leaves out), so that start-up costs and the rate reached can be told apart. Ratios are of end-to-end clips/s.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RATE = 16_000  # Hz, the tiny models' rate
CLIP_SECONDS = (0.8, 1.0, 1.2)  # lengths of the generated clips, cycled


def make_files(root: Path, n: int) -> list[str]:
    from audioclf.testing import TONE_CLASSES, class_clip, write_clip

    labels = list(TONE_CLASSES)
    clips = (class_clip(labels[i % 3], CLIP_SECONDS[i % 3], RATE, seed=i) for i in range(n))
    return [str(write_clip(root / f"clip_{i:05d}.wav", clip, RATE)) for i, clip in enumerate(clips)]


@dataclass
class Run:
    """One timed run: seconds from its call to OUT in place, and to its first results."""

    seconds: float
    first_results_seconds: float
    first_rows: int  # rows that came with the first results

    def rate_after_first(self, n: int) -> float:
        """NaN where the rest took under a second: too few blocks after the first to tell a rate."""
        rest = self.seconds - self.first_results_seconds
        return (n - self.first_rows) / rest if rest >= 1.0 else float("nan")


class _TimedWriter:
    """A ShardWriter that notes when the first rows reach it."""

    def __init__(self, writer, started: float):
        self.writer = writer
        self.started = started
        self.first_seconds: float | None = None
        self.first_rows = 0

    def write(self, table) -> None:
        if self.first_seconds is None and table.num_rows:
            self.first_seconds, self.first_rows = time.perf_counter() - self.started, table.num_rows
        self.writer.write(table)

    def __getattr__(self, name):
        return getattr(self.writer, name)


def run_local(model: str, paths: list[str], out: Path, threads: int | None) -> Run:
    from audioclf import scale
    from audioclf.infer import load_classifier

    started = time.perf_counter()
    classifier = load_classifier(model, threads=threads)
    loaded = time.perf_counter() - started  # the rows are written in one go at the end: the load stands for "first"
    with scale.ShardWriter(out) as writer:
        scale.predict_local(classifier, scale.file_items(paths), writer)
    return Run(time.perf_counter() - started, loaded, 0)


def run_ray(model: str, paths: list[str], out: Path, actors: int) -> Run:
    from audioclf import scale

    started = time.perf_counter()
    with scale.ShardWriter(out) as writer:
        timed = _TimedWriter(writer, started)
        scale.predict_ray(model, scale.file_items(paths), timed, concurrency=actors, threads=1)
    return Run(time.perf_counter() - started, timed.first_seconds, timed.first_rows)


def top_labels(out: Path) -> list[str]:
    from audioclf.scale import read_results

    return [labels[0] if labels else None for labels in read_results(out).column("labels").to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="A model directory; default: the demo model if ./audioclf-demo-model exists, "
                                        "else a tone model of --model-config built in a second.")
    parser.add_argument("--model-config", default="whisper-tiny",
                        help="The model shape to build (random weights, nearest-centroid head) without --model.")
    parser.add_argument("--files", type=int, default=1000, help="How many clips to generate and classify.")
    parser.add_argument("--local-threads", default="1",
                        help="Torch threads of the local runs, comma-separated; 0: the CLI's default, one per core.")
    parser.add_argument("--actors", default="1,2",
                        help="Ray actor counts to run (one torch thread each), comma-separated.")
    args = parser.parse_args()

    # quiet transformers here and, through the environment Ray's workers inherit, in the actors
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import ray

    from audioclf.cli import DEMO_OUTPUT
    from audioclf.testing import save_tone_model

    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="audioclf-bench-scale-") as tmp:
        root = Path(tmp)
        model = args.model or (str(DEMO_OUTPUT) if DEMO_OUTPUT.is_dir() else None)
        model_name = model or f"{args.model_config} tone model"
        if model is None:
            model = str(save_tone_model(root / "model", args.model_config))
        paths = make_files(root / "clips", args.files)
        print(f"{len(paths)} clips of {'/'.join(f'{s:g}' for s in CLIP_SECONDS)} s at {RATE} Hz, model: {model_name}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before", flush=True)

        labels: dict[str, list] = {}
        for threads in (int(t) for t in args.local_threads.split(",")):
            name = f"local t{threads or os.cpu_count()}"
            runs[name] = run_local(model, paths, root / name.replace(" ", "_"), threads or None)
            labels[name] = top_labels(root / name.replace(" ", "_"))
            report(name, runs[name], len(paths))

        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        print(f"(local Ray instance started in {time.perf_counter() - started:.1f} s, not counted)", flush=True)
        try:
            for actors in (int(a) for a in args.actors.split(",")):
                name = f"ray x{actors}"
                runs[name] = run_ray(model, paths, root / name.replace(" ", "_"), actors)
                labels[name] = top_labels(root / name.replace(" ", "_"))
                report(name, runs[name], len(paths))
        finally:
            ray.shutdown()

    local, first_ray = next(iter(runs)), next((name for name in runs if name.startswith("ray")), None)
    print()
    print(f"{'run':<9} {'seconds':>8} {'to first':>9} {'clips/s':>8} {'after first':>12} {f'vs {local}':>12} "
          f"{f'vs {first_ray}':>10} {'same top-1':>11}")
    for name, run in runs.items():
        same = sum(a == b for a, b in zip(labels[name], labels[local]))
        vs_ray = f"{runs[first_ray].seconds / run.seconds:.2f}x" if name.startswith("ray") else "-"
        print(f"{name:<9} {run.seconds:>8.1f} {run.first_results_seconds:>9.1f} {len(paths) / run.seconds:>8.1f} "
              f"{run.rate_after_first(len(paths)):>12.1f} {runs[local].seconds / run.seconds:>11.2f}x {vs_ray:>10} "
              f"{same:>6}/{len(paths)}")
    print(f"load average {os.getloadavg()[0]:.2f} after")
    if any(labels[name] != labels[local] for name in labels):
        sys.exit("top-1 labels differ between runs")


def report(name: str, run: Run, n: int) -> None:
    print(f"{name}: {n / run.seconds:.1f} clips/s ({run.seconds:.1f} s; first results after "
          f"{run.first_results_seconds:.1f} s, {run.rate_after_first(n):.1f} clips/s from there)", flush=True)


if __name__ == "__main__":
    main()
