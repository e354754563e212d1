"""Factories for synthetic audio, data sources and tiny models, shared by the tests and the benchmarks.

Everything here is deterministic given its seed and needs no network.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

# Three classes whose clips a tiny random model can tell apart: a low tone, a high tone, and noise.
TONE_CLASSES = {"low": 220.0, "high": 1760.0, "noise": None}


def tone(frequency_hz: float, seconds: float, sampling_rate: int, amplitude: float = 0.5, phase: float = 0.0) -> np.ndarray:
    """A float32 sine clip, shape (round(seconds * sampling_rate),)."""
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * frequency_hz * t + phase)).astype(np.float32)


def noise(seconds: float, sampling_rate: int, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    """Float32 white noise, shape (round(seconds * sampling_rate),)."""
    rng = np.random.default_rng(seed)
    return (amplitude * rng.uniform(-1, 1, int(round(seconds * sampling_rate)))).astype(np.float32)


def class_clip(label: str, seconds: float, sampling_rate: int, seed: int = 0) -> np.ndarray:
    """A clip of one of TONE_CLASSES with a little jitter in pitch, level and noise, so clips differ."""
    rng = np.random.default_rng(seed)
    frequency = TONE_CLASSES[label]
    if frequency is None:
        return noise(seconds, sampling_rate, amplitude=float(rng.uniform(0.2, 0.4)), seed=seed)
    clip = tone(frequency * rng.uniform(0.95, 1.05), seconds, sampling_rate, float(rng.uniform(0.3, 0.6)), rng.uniform(0, np.pi))
    return clip + noise(seconds, sampling_rate, amplitude=0.02, seed=seed + 1)


def write_clip(path: Path, samples: np.ndarray, sampling_rate: int, subtype: str | None = None, format: str | None = None) -> Path:
    """Write samples (frames,) or (frames, channels) with soundfile; the format follows the suffix unless given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sampling_rate, subtype=subtype, format=format)
    return path


def make_folder_dataset(
    root: Path,
    labels: tuple[str, ...] = ("low", "high", "noise"),
    clips_per_label: int = 6,
    seconds: float = 0.5,
    sampling_rate: int = 8000,
    suffix: str = ".wav",
    groups: int = 3,
) -> Path:
    """A folder with one subfolder per label; clip i of each label belongs to group `g{i % groups}`."""
    root = Path(root)
    for label in labels:
        for i in range(clips_per_label):
            seed = labels.index(label) * 1000 + i
            write_clip(root / label / f"g{i % groups}_{i:03d}{suffix}", class_clip(label, seconds, sampling_rate, seed), sampling_rate)
    return root


def make_manifest_dataset(
    root: Path,
    labels: tuple[str, ...] = ("low", "high", "noise"),
    clips_per_label: int = 6,
    seconds: float = 0.5,
    sampling_rate: int = 8000,
    groups: int = 3,
    with_split: bool = False,
    kind: str = "csv",
) -> Path:
    """Clips under root/clips plus a manifest (path relative to it, label, speaker[, split]); returns its path."""
    root = Path(root)
    rows = []
    for li, label in enumerate(labels):
        for i in range(clips_per_label):
            rel = f"clips/{label}_{i:03d}.wav"
            write_clip(root / rel, class_clip(label, seconds, sampling_rate, li * 1000 + i), sampling_rate)
            row = {"path": rel, "label": label, "speaker": f"spk{i % groups}"}
            if with_split:
                row["split"] = "test" if i % groups == 0 else "train"
            rows.append(row)
    if kind == "csv":
        return write_manifest(root / "manifest.csv", rows)
    import json

    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def write_manifest(manifest: Path, rows: list[dict]) -> Path:
    """Write rows (dicts with the same keys, the first row's order) as a CSV manifest; returns its path."""
    with Path(manifest).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(manifest)


# Options under which the tiny random models learn TONE_CLASSES within a few epochs of a few dozen 1 s clips, in
# seconds on one CPU thread: high learning rates (nothing pretrained to preserve), small batches for enough updates,
# no warm-up, every epoch run (no early stopping) so the loss curve can be checked.
TINY_TRAINING = dict(
    learning_rate=1e-3, head_learning_rate=1e-2, batch_size=4, eval_batch_size=16, epochs=8, warmup_ratio=0.0,
    validation_size=0.2, early_stopping_patience=0, threads=1,
    spec_augment=0.0,  # a tone lives in a few mel bins: a frequency mask can hide all a random model has to go on
)


def tiny_train_options(**overrides):
    """TrainOptions of the default preset with TINY_TRAINING and then `overrides` applied."""
    from audioclf.config import resolve_options

    return resolve_options("default", {**TINY_TRAINING, **overrides})


def save_tone_model(directory, name: str = "tiny-whisper", labels=("low", "high", "noise"), seed: int = 0):
    """A tiny random model (1 s window for Whisper) with a nearest-centroid head fitted on a few TONE_CLASSES
    clips and saved to `directory`, so that, unlike a random head, it gives each class its own label with a
    clear score. Builds in a second, no training."""
    import torch

    from audioclf.infer import Classifier
    from audioclf.model import build_model, fit_whisper_window

    rate = 16_000  # Hz, the tiny models' rate
    bundle = build_model(name, list(labels), seed=seed)
    fit_whisper_window(bundle, 1)
    head = bundle.model.classifier
    features: list = []
    hook = head.register_forward_hook(lambda module, inputs, output: features.append(inputs[0].detach()))
    classifier = Classifier(bundle)
    means = []
    for label in labels:
        features.clear()
        classifier.window_probabilities([class_clip(label, 1.0, rate, seed=s) for s in range(4)])
        means.append(torch.cat(features).mean(0))
    hook.remove()
    centroids = torch.stack(means)
    center = centroids.mean(0)
    directions = centroids - center
    with torch.no_grad():
        head.weight.copy_(5 * directions / directions.norm(dim=1, keepdim=True) ** 2)
        head.bias.copy_(-(head.weight @ center))
    bundle.save(directory)
    return directory
