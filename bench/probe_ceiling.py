"""How far can any linear readout of a frozen encoder's per-layer means go on the demo data? (run by hand)

    python bench/probe_ceiling.py [--backbone DIR] [--views 4]

Probe mode trains exactly transformers' `use_weighted_layer_sum` head on per-clip means of the frozen encoder's
hidden layers: a linear map of a weighted sum of those means. This script asks the same features a looser question:
on the demo's voice-disjoint split (as `audioclf demo` and bench/train.py split it), it fits scikit-learn readouts
that are at least as free as that head (logistic regression and shrinkage LDA on standardized features, each layer
alone and all layers side by side), on the clean training clips and again with `--views` augmented copies of each
(random crop and speed, as full fine-tuning draws them). It reports test accuracy on the unseen voices, and the
best of all readouts picked on the test clips themselves: an upper bound, not an estimate. If that bound is far
below full fine-tuning's accuracy (bench/train.py), no training of the probe head can close the gap.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

DEMO_TEST_SIZE = 0.25  # as `audioclf demo`: four of every sixteen voices are never heard in training
SPEED_PERTURBATION = 0.1  # the default preset's
READOUTS = {"logistic C=0.03": ("lr", 0.03), "logistic C=0.3": ("lr", 0.3), "logistic C=3": ("lr", 3.0),
            "LDA shrinkage auto": ("lda", None)}


def encode(bundle, split, window: float, crop: str, speed: float = 0.0, epoch: int = 0) -> np.ndarray:
    """probe.layer_means of a split, its clips cut as training (random crop and speed, drawn per epoch) or as
    evaluation cuts them."""
    from audioclf.data import clip_samples
    from audioclf.features import CLIP_INDEX_COLUMN, BatchFeaturizer, ClipTransform
    from audioclf.probe import layer_means

    transform = ClipTransform(clip_samples, bundle.sampling_rate, window, crop, seed=0, speed_perturbation=speed)
    transform.epoch = epoch
    featurizer = BatchFeaturizer(bundle.feature_extractor, bundle.model_type, bundle.uses_attention_mask)
    named = split.add_column(CLIP_INDEX_COLUMN, np.arange(len(split)))
    return layer_means(bundle, featurizer, named.with_transform(transform), progress=False)


def readout_accuracy(kind: str, strength: float | None, x, y, test_x, test_y) -> float:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    if kind == "lr":
        model = LogisticRegression(C=strength, max_iter=3000)
    else:
        model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter at the weakest regularisation
        model.fit(scaler.transform(x), y)
    return float(np.mean(model.predict(scaler.transform(test_x)) == test_y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", type=Path, help="A Whisper checkpoint directory (default: whisper-tiny.en).")
    parser.add_argument("--views", type=int, default=4, help="Augmented copies of each training clip (default 4).")
    args = parser.parse_args()

    from audioclf.backbone import ensure_backbone
    from audioclf.config import DataSpec
    from audioclf.data import demo_manifest, load_clips
    from audioclf.model import fit_whisper_window, load_model
    from audioclf.train import choose_window_from

    backbone = args.backbone or ensure_backbone("whisper-tiny.en")
    clips = load_clips(DataSpec(data=str(demo_manifest()), group_column="voice", test_size=DEMO_TEST_SIZE),
                       progress=False)
    train, test = clips.splits["train"], clips.splits["test"]
    bundle = load_model(str(backbone), clips.labels, weighted_layer_sum=True)
    window = choose_window_from(train, None, bundle.model_type == "whisper")
    if bundle.model_type == "whisper":
        fit_whisper_window(bundle, int(window))
    started = time.monotonic()
    x, test_x = encode(bundle, train, window, "start"), encode(bundle, test, window, "start")
    views = [encode(bundle, train, window, "random", SPEED_PERTURBATION, epoch) for epoch in range(1, args.views + 1)]
    y, test_y = np.asarray(train["label"]), np.asarray(test["label"])
    print(f"{len(x)} training clips ({args.views} augmented views each), {len(test_x)} test clips from unseen voices, "
          f"{x.shape[1]} hidden layers of {x.shape[2]}; encoded in {time.monotonic() - started:.0f} s\n")

    layers = {f"layer {i}": (lambda f, i=i: f[:, i]) for i in range(x.shape[1])}
    layers["all layers side by side"] = lambda f: f.reshape(len(f), -1)
    print(f"{'features':26} {'readout':20} {'clean':>7} {'+views':>7}")
    best = (0.0, "")
    for feature_name, select in layers.items():
        for readout_name, (kind, strength) in READOUTS.items():
            clean = readout_accuracy(kind, strength, select(x), y, select(test_x), test_y)
            augmented = readout_accuracy(kind, strength, select(np.concatenate([x, *views])),
                                         np.tile(y, 1 + len(views)), select(test_x), test_y) if views else float("nan")
            print(f"{feature_name:26} {readout_name:20} {clean:7.3f} {augmented:7.3f}", flush=True)
            best = max(best, (clean, f"{feature_name}, {readout_name}, clean"),
                       (augmented if views else 0.0, f"{feature_name}, {readout_name}, with views"))
    print(f"\nbest test accuracy of any readout above (chosen on the test clips: an upper bound): {best[0]:.3f} "
          f"({best[1]})")


if __name__ == "__main__":
    main()
