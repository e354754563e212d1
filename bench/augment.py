"""Which waveform augmentations the default preset turns on: each one alone, and all together, against none, side
by side in one run (run by hand, not in CI).

    python bench/augment.py                      # every variant
    python bench/augment.py --variants none,all  # a quicker look

Every variant fine-tunes the Whisper tiny.en encoder (installed on first use) with the default preset and the
demo's 6 epochs on the demo data's voice-disjoint split (32 of 128 voices never heard in training, as `audioclf
demo` splits it), and is scored on those test clips twice: as they are, and as a noisy copy of them, the same clips
with noise added at NOISY_SNR_DB (white for every other clip, pink for the rest; the SNR over the whole clip, as
features.add_noise sets it). Reported: wall time, clean and noisy test accuracy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from audioclf.backbone import ensure_backbone
from audioclf.config import DataSpec, ModelOptions, resolve_options
from audioclf.data import demo_manifest, load_clips
from audioclf.evaluate import evaluate_model
from audioclf.features import add_noise, coloured_noise
from audioclf.train import train

DEMO_TEST_SIZE = 0.25  # as `audioclf demo`
DEMO_EPOCHS = 6  # as `audioclf demo`: inside its time budget
NOISY_SNR_DB = 10.0
NOISE_SEED = 20251201
VARIANTS = {
    "none": {},
    "noise": dict(noise_share=0.5, noise_min_snr_db=5.0, noise_max_snr_db=30.0),
    "gain": dict(gain_db=6.0),
    "shift": dict(time_shift_seconds=0.2),
    "mixup": dict(mixup=0.2),
}
VARIANTS["all"] = {key: value for options in VARIANTS.values() for key, value in options.items()}


def demo_spec() -> DataSpec:
    return DataSpec(data=str(demo_manifest()), group_column="voice", test_size=DEMO_TEST_SIZE)


def noisy_test_copy(root: Path) -> Path:
    """The demo's test clips with noise at NOISY_SNR_DB, at their own rate, under root, with a manifest."""
    test = load_clips(demo_spec(), progress=False).splits["test"].with_format(None)
    rows = []
    for i, (audio, label) in enumerate(zip(test["audio"], test["label"])):
        samples, rate = sf.read(audio["path"], dtype="float32")
        rng = np.random.default_rng([NOISE_SEED, i])
        noisy = add_noise(samples, coloured_noise(len(samples), "white" if i % 2 == 0 else "pink", rng), NOISY_SNR_DB)
        path = root / f"{i:04d}.flac"
        sf.write(path, np.clip(noisy, -1.0, 1.0), rate, subtype="PCM_16")
        rows.append(f"{path.name},{test.features['label'].int2str(label)}")
    manifest = root / "manifest.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Which, comma-separated.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    backbone = ensure_backbone("whisper-tiny.en")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "noisy").mkdir()
        noisy = noisy_test_copy(work / "noisy")
        for name in args.variants.split(","):
            options = resolve_options("default", {"epochs": DEMO_EPOCHS, **VARIANTS[name]})
            started = time.monotonic()
            result = train(demo_spec(), ModelOptions(model=str(backbone)), options, work / name, progress=False,
                           echo=lambda line: print(f"  [{name}] {line}", flush=True))
            seconds = time.monotonic() - started
            noisy_report = evaluate_model(work / name, DataSpec(data=str(noisy)), progress=False)
            results[name] = {"options": VARIANTS[name], "seconds": seconds,
                             "clean_accuracy": result.metrics["test"]["accuracy"],
                             "noisy_accuracy": noisy_report.accuracy, "clips": noisy_report.n}
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    print(f"\n{'variant':8} {'wall s':>7} {'clean test acc':>15} {'noisy test acc (10 dB)':>23}")
    for name, r in results.items():
        print(f"{name:8} {r['seconds']:7.0f} {r['clean_accuracy']:15.3f} {r['noisy_accuracy']:23.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
