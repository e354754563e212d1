"""Probe vs fine-tuning (--mode finetune) on the bundled demo data, side by side in one run (run by hand, not in CI).

    python bench/train.py [--backbone DIR] [--output DIR]

Both start from the Whisper tiny.en encoder (installed on first use), train on the same voice-disjoint split
(32 of 128 voices held out for testing) with the default preset, and report end-to-end wall time (the probe's
feature-caching pass included; its disk cache is cleared first) and test accuracy on the unseen voices.
Issue 5's target: probe at least 10x faster, accuracy no more than 2 points below full fine-tuning.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from audioclf.backbone import ensure_backbone
from audioclf.config import DataSpec, ModelOptions, resolve_options
from audioclf.data import demo_manifest
from audioclf.train import train

DEMO_TEST_SIZE = 0.25  # as `audioclf demo`: four of every sixteen voices are never heard in training


def run(mode: str, backbone: Path, output: Path) -> dict:
    started = time.monotonic()
    result = train(DataSpec(data=str(demo_manifest()), group_column="voice", test_size=DEMO_TEST_SIZE),
                   ModelOptions(model=str(backbone)), resolve_options("default", {"mode": mode}), output,
                   overwrite=True, progress=False, echo=lambda line: print(f"  [{mode}] {line}", flush=True))
    return {"seconds": time.monotonic() - started, "accuracy": result.metrics["test"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", type=Path, help="A Whisper checkpoint directory (default: whisper-tiny.en).")
    parser.add_argument("--output", type=Path, help="Where to keep the two models (default: a temporary folder).")
    args = parser.parse_args()
    backbone = args.backbone or ensure_backbone("whisper-tiny.en")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.output or Path(scratch)
        os.environ["AUDIOCLF_HOME"] = str(Path(scratch) / "home")  # a cold feature cache, so caching is timed
        results = {mode: run(mode, backbone, root / mode) for mode in ("probe", "finetune")}
    probe, full = results["probe"], results["finetune"]
    print(f"\n{'mode':8} {'wall s':>8} {'test accuracy':>14}")
    for mode, r in results.items():
        print(f"{mode:8} {r['seconds']:8.1f} {r['accuracy']:14.3f}")
    speedup, gap = full["seconds"] / probe["seconds"], full["accuracy"] - probe["accuracy"]
    print(f"\nprobe speed-up over full: {speedup:.1f}x (target >= 10x: {'met' if speedup >= 10 else 'NOT met'})")
    print(f"accuracy, full minus probe: {gap:+.3f} (target <= 0.02: {'met' if gap <= 0.02 else 'NOT met'})")


if __name__ == "__main__":
    main()
