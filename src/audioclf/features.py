"""Features: cut clips to the model's window and turn batches of samples into model inputs.

Decoding is lazy: a dataset transform decodes and crops each row when the data loader asks for it, and the
collator runs the model's own feature extractor on the batch. Nothing holds the whole corpus in RAM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import soxr
import torch

from audioclf.config import CROPS

CLIP_INDEX_COLUMN = "clip_index"  # a training split's row numbers: what names a clip for its random draws
SPEED_RATE_HZ = 16_000  # nominal rate for speed changes; only the ratio to round(rate * factor) matters
TIME_MASK_FRAMES = 20  # SpecAugment time mask: 20 log-mel frames, 0.2 s at Whisper's 100 frames per second
FREQUENCY_MASKS = 2  # SpecAugment frequency masks per clip, each over FREQUENCY_MASK_BINS mel bins
FREQUENCY_MASK_BINS = 10  # of Whisper's 80


def window_samples(seconds: float, sampling_rate: int) -> int:
    return int(round(seconds * sampling_rate))


def crop(samples: np.ndarray, length: int, how: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Cut a clip to at most `length` samples: a random slice (training), the centre, or the start
    (what the feature extractors' truncation and the pipeline do). Shorter clips are returned whole."""
    if samples.shape[0] <= length:
        return samples
    if how == "start":
        offset = 0
    elif how == "center":
        offset = (samples.shape[0] - length) // 2
    elif how == "random":
        offset = int((rng or np.random.default_rng()).integers(0, samples.shape[0] - length + 1))
    else:
        raise ValueError(f"crop must be one of {CROPS}, not {how!r}")
    return samples[offset : offset + length]


def change_speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """Play a clip `factor` times as fast (tempo and pitch together), by resampling: the classic speed
    perturbation that makes one voice sound like a slightly different one."""
    return soxr.resample(samples, round(SPEED_RATE_HZ * factor), SPEED_RATE_HZ).astype(np.float32, copy=False)


class ClipTransform:
    """A `Dataset.set_transform` callable: decodes each row's audio, resamples, crops to the window.

    Returns columns `samples` (float32 arrays) and `label`. A random crop and speed are drawn from a generator
    seeded by (seed, epoch, clip), so a run with the same seed sees the same crops, each epoch sees different ones,
    and a clip gets the same crop whichever process decodes it and in whatever order: one process with batches of
    8 and two with batches of 4 train on the same samples. The trainer sets `epoch` as each epoch begins. A clip is
    named by its row in the split (a CLIP_INDEX_COLUMN the trainer adds), so the same data gives the same run
    wherever it is stored; rows without one are named by their path and bytes.
    """

    def __init__(self, decode: Callable[[dict, int], np.ndarray], sampling_rate: int, window_seconds: float | None,
                 how: str, seed: int = 0, speed_perturbation: float = 0.0, spec_augment: float = 0.0):
        self.decode = decode
        self.speed_perturbation = speed_perturbation
        self.spec_augment = spec_augment
        self.sampling_rate = sampling_rate
        self.length = None if window_seconds is None else window_samples(window_seconds, sampling_rate)
        self.how = how
        self.seed = seed
        self.epoch = 0

    def __call__(self, batch: dict) -> dict:
        random = self.speed_perturbation or self.how == "random" or self.spec_augment
        clips, mask_seeds = [], []
        keys = batch.get(CLIP_INDEX_COLUMN) or [None] * len(batch["audio"])
        for audio, key in zip(batch["audio"], keys):
            samples = self.decode(audio, self.sampling_rate)
            rng = np.random.default_rng([self.seed, self.epoch, clip_key(audio) if key is None else key]) if random else None
            if self.speed_perturbation:
                samples = change_speed(samples, rng.uniform(1 - self.speed_perturbation, 1 + self.speed_perturbation))
            clips.append(samples if self.length is None else crop(samples, self.length, self.how, rng))
            if self.spec_augment:
                mask_seeds.append(int(rng.integers(2**63)))
        out = {"samples": clips, "label": batch["label"]}
        if self.spec_augment:  # the collator masks the features of rows that carry a seed (training rows only)
            out["mask_share"] = [self.spec_augment] * len(clips)
            out["mask_seed"] = mask_seeds
        return out


def clip_key(audio) -> int:
    """A number that names one clip by its audio value (path and bytes), the same in every process."""
    digest = hashlib.blake2b(digest_size=8)
    if isinstance(audio, dict):
        digest.update(str(audio.get("path") or "").encode())
        digest.update(audio.get("bytes") or b"")
    else:
        digest.update(str(audio).encode())
    return int.from_bytes(digest.digest(), "little")


class BatchFeaturizer:
    """Turns a list of mono clips at the model's rate into a batch of model inputs (torch tensors).

    Whisper: the feature extractor pads or truncates each clip to the window and makes log-mel frames.
    wav2vec2 family: raw samples padded to the longest clip, with an attention mask only for models
    built to take one.
    """

    def __init__(self, feature_extractor, model_type: str, uses_attention_mask: bool):
        self.feature_extractor = feature_extractor
        self.model_type = model_type
        self.uses_attention_mask = uses_attention_mask

    def __call__(self, clips: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        fe = self.feature_extractor
        if self.model_type == "whisper":
            inputs = fe(list(clips), sampling_rate=fe.sampling_rate, return_tensors="pt")
            return {"input_features": inputs["input_features"]}
        kwargs = {"padding": True}
        if self.model_type in ("audio-spectrogram-transformer",):
            kwargs = {}
        inputs = fe(list(clips), sampling_rate=fe.sampling_rate, return_tensors="pt",
                    return_attention_mask=self.uses_attention_mask, **kwargs)
        return {key: value for key, value in inputs.items() if key != "attention_mask" or self.uses_attention_mask}


def spec_augment(features: torch.Tensor, time_share: float, rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment on one clip's log-mel features (mel bins, frames): zero time masks of TIME_MASK_FRAMES frames
    covering about `time_share` of the frames (overlaps allowed), and FREQUENCY_MASKS bands of FREQUENCY_MASK_BINS
    mel bins. Returns a masked copy."""
    masked = features.clone()
    bins, frames = masked.shape
    for _ in range(int(round(time_share * frames / TIME_MASK_FRAMES))):
        start = int(rng.integers(0, max(1, frames - TIME_MASK_FRAMES + 1)))
        masked[:, start : start + TIME_MASK_FRAMES] = 0.0
    for _ in range(FREQUENCY_MASKS):
        start = int(rng.integers(0, max(1, bins - FREQUENCY_MASK_BINS + 1)))
        masked[start : start + FREQUENCY_MASK_BINS, :] = 0.0
    return masked


class TrainingCollator:
    """The Trainer's data collator: model inputs for the clips plus their `labels`.

    Rows from a training transform with `spec_augment` carry a mask seed; their log-mel features (Whisper) are
    masked with SpecAugment, drawn from that seed, so a clip gets the same masks whichever process collates it.
    Evaluation rows carry none and are left as they are. Models fed raw samples (the wav2vec2 family) mask
    their own hidden states while training (`mask_time_prob` in their config), so nothing is done for them here.
    """

    def __init__(self, featurizer: BatchFeaturizer):
        self.featurizer = featurizer

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.featurizer([row["samples"] for row in rows])
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        if "input_features" in batch and rows and rows[0].get("mask_seed") is not None:
            batch["input_features"] = torch.stack([
                spec_augment(features, row["mask_share"], np.random.default_rng(row["mask_seed"]))
                for features, row in zip(batch["input_features"], rows)
            ])
        return batch
