"""A learning curve: probe, fine-tuning and the default (best) mode at 2 to 64 training clips per label, side by side.

Two datasets, each with a fixed test set of whole voices never heard in training: the bundled demo data (14 intents,
128 synthetic voices; 96 outside the test voices, about 48 clips per intent, so "64" means all of them) and the
spoken digits that bench/presets.py makes (10 digits, 48 voices; 36 clips per digit outside the test voices). At each
size the training clips are drawn at random per label (seeded), and three runs train the Whisper tiny.en encoder
with the default preset:

- the default, `--mode best`, end to end with a cold feature cache (probe, fine-tune, keep the better);
- `--mode probe` and `--mode finetune`: the default's two candidates are those modes' models (the same split, seed,
  head fit and Trainer run; tests/test_train.py checks it weight for weight on tiny models), so their test figures
  are taken from the default's metrics.json, with each phase's own seconds (marked *: the encoding pass and the fit,
  or the fine-tuning with its probe-fitted start; not the loading and test scoring around them). Where the default
  did not fine-tune (too few clips to hold a validation share), `--mode finetune` is run on its own, end to end.

Test accuracy scores every window of each clip, as `audioclf evaluate` does. Run by hand (not a test):

    python bench/learning_curve.py [--sizes 2,4,8,16,32,64] [--seeds 2] [--seeded-up-to 16] [--first-seed 0]
                                   [--datasets demo,digits] [--output results.json]
    python bench/learning_curve.py --table results.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from learning_data import read_rows, subsample  # noqa: E402
from presets import make_digits  # noqa: E402

from audioclf.backbone import ensure_backbone  # noqa: E402
from audioclf.config import DataSpec, ModelOptions, resolve_options  # noqa: E402
from audioclf.data import demo_manifest  # noqa: E402
from audioclf.errors import DataError  # noqa: E402
from audioclf.train import train  # noqa: E402

MODES = ("probe", "finetune", "best")
DIGIT_VOICES = 48  # as bench/presets.py


def run(manifest: Path, backbone: Path, mode: str, seed: int, output: Path) -> dict:
    """One end-to-end training run with a cold feature cache: its metrics and wall seconds."""
    os.environ["AUDIOCLF_HOME"] = str(output.with_name(output.name + "-home"))
    started = time.monotonic()
    result = train(DataSpec(data=str(manifest), group_column="voice"), ModelOptions(model=str(backbone)),
                   resolve_options("default", {"mode": mode, "seed": seed}), output, overwrite=True, progress=False,
                   echo=lambda line: None)
    return {"metrics": result.metrics, "seconds": time.monotonic() - started}


def measure(manifest: Path, backbone: Path, seed: int, work: Path) -> dict:
    """{mode: {"accuracy", "seconds", ...}} for one training set: the default run, whose two candidates are probe
    mode's and finetune mode's models, and finetune mode on its own where the default did not fine-tune."""
    best = run(manifest, backbone, "best", seed, work / "best")
    candidates = best["metrics"]["candidates"]
    rows = {"best": {"accuracy": best["metrics"]["test"]["accuracy"], "seconds": best["seconds"],
                     "kept": best["metrics"]["kept"], "disagreements": best["metrics"].get("disagreements"),
                     "validation": {name: candidate["validation"] for name, candidate in candidates.items()}},
            "probe": {"accuracy": candidates["probe"]["test"]["accuracy"], "seconds": candidates["probe"]["seconds"],
                      "phase": True}}
    if "finetune" in candidates:
        rows["finetune"] = {"accuracy": candidates["finetune"]["test"]["accuracy"],
                            "seconds": candidates["finetune"]["seconds"], "phase": True}
    else:
        try:
            alone = run(manifest, backbone, "finetune", seed, work / "finetune")
            rows["finetune"] = {"accuracy": alone["metrics"]["test"]["accuracy"], "seconds": alone["seconds"]}
        except DataError as e:  # too few clips for any voice-disjoint validation share: fine-tuning cannot run
            print(f"  finetune: {e}", flush=True)
            rows["finetune"] = {"accuracy": None, "seconds": None}
    rows["clips"] = best["metrics"]["data"]["clips"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2,4,8,16,32,64", help="Training clips per label, comma-separated.")
    parser.add_argument("--seeds", type=int, default=2, help="Seeds (training draws and runs) per size.")
    parser.add_argument("--first-seed", type=int, default=0, help="The first of them (to add seeds to a run).")
    parser.add_argument("--seeded-up-to", type=int, default=16, help="Sizes above this run the first seed only.")
    parser.add_argument("--datasets", default="demo,digits", help="Which of demo, digits.")
    parser.add_argument("--output", type=Path, help="Write every run's figures here as JSON.")
    parser.add_argument("--table", type=Path, nargs="+", help="Only print the table of earlier --output files.")
    args = parser.parse_args()
    if args.table:
        print_table([row for path in args.table for row in json.loads(path.read_text())])
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    backbone = ensure_backbone("whisper-tiny.en")
    results = []
    with tempfile.TemporaryDirectory(prefix="audioclf-curve-") as scratch:
        scratch = Path(scratch)
        sources = {"demo": lambda: read_rows(demo_manifest()),
                   "digits": lambda: read_rows(make_digits(scratch / "digits", DIGIT_VOICES))}
        for dataset in args.datasets.split(","):
            rows = sources[dataset]()
            for size in sizes:
                for seed in range(args.first_seed, args.first_seed + (args.seeds if size <= args.seeded_up_to else 1)):
                    work = scratch / f"{dataset}-{size}-{seed}"
                    manifest = subsample(rows, size, work / "data", seed)
                    measured = measure(manifest, backbone, seed, work)
                    results.append({"dataset": dataset, "clips_per_label": size, "seed": seed, **measured})
                    print(json.dumps({k: v for k, v in results[-1].items() if k != "clips"}), flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))
    print_table(results)


def print_table(results: list[dict]) -> None:
    """One row per dataset and size: each mode's test accuracy and seconds, means over the seeds; the default's
    mean minus that of the better other mode (the one with the higher mean), with the standard error of that
    difference over the seeds (paired by seed; none for one seed); the same per seed against the better of the two
    in that seed, averaged (an oracle picking per seed: every noisy choice falls below it); what was kept."""
    print(f"\n{'data':7} {'clips/label':>11} {'seeds':>5} " + " ".join(f"{mode + ' acc':>12}" for mode in MODES)
          + f" {'best - better mode':>20} {'best - max':>10} " + " ".join(f"{mode + ' s':>10}" for mode in MODES)
          + "  kept")
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        groups.setdefault((row["dataset"], row["clips_per_label"]), []).append(row)
    for (dataset, size), rows in groups.items():
        def values(mode: str, key: str) -> list[float]:
            return [row[mode][key] for row in rows if row[mode][key] is not None]

        def mean(mode: str, key: str):
            return float(np.mean(values(mode, key))) if values(mode, key) else None

        def shown(value, width: int, digits: int) -> str:
            return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"

        mark = {mode: "*" if any(row[mode].get("phase") for row in rows) else " " for mode in MODES}
        better = max(("probe", "finetune"), key=lambda mode: -1.0 if mean(mode, "accuracy") is None
                     else mean(mode, "accuracy"))
        paired = [row["best"]["accuracy"] - row[better]["accuracy"] for row in rows]
        error = f" \u00b1{np.std(paired, ddof=1) / np.sqrt(len(paired)):.3f}" if len(paired) > 1 else ""
        gap = f"{np.mean(paired):+.3f} ({better[:5]}){error}"
        oracle = float(np.mean([row["best"]["accuracy"] - max(row["probe"]["accuracy"],
                                                                row["finetune"]["accuracy"] or 0.0) for row in rows]))
        kept = ", ".join(row["best"]["kept"] + _counts(row["best"].get("disagreements")) for row in rows)
        print(f"{dataset:7} {size:11d} {len(rows):5d} " + " ".join(shown(mean(mode, "accuracy"), 12, 3) for mode in MODES)
              + f" {gap:>20} {oracle:+10.3f} " + " ".join(shown(mean(mode, "seconds"), 9, 1) + mark[mode] for mode in MODES)
              + f"  {kept}")
    print("(* a phase of the default run; best - better mode: the default's mean minus the better other mode's, "
          "\u00b1 its standard error over the seeds; best - max: against the better of the two in each seed, averaged; "
          "kept W:L: of the validation clips, W right for the fine-tuned model alone and L for the probe alone)")


def _counts(disagreements: dict | None) -> str:
    return "" if not disagreements else \
        f" {disagreements['fine_tuned_only_right']}:{disagreements['probe_only_right']}"


if __name__ == "__main__":
    main()
