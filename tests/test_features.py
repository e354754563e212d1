"""SpecAugment on training batches: what is masked, that evaluation batches are untouched, and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from audioclf.config import resolve_options
from audioclf.errors import ConfigError
from audioclf.features import (
    CLIP_INDEX_COLUMN,
    FREQUENCY_MASK_BINS,
    FREQUENCY_MASKS,
    TIME_MASK_FRAMES,
    BatchFeaturizer,
    ClipTransform,
    TrainingCollator,
    spec_augment,
)

RATE_HZ = 16_000
WINDOW_SECONDS = 2.0


def _decode(audio: dict, sampling_rate: int) -> np.ndarray:
    """Stand-in for clip_samples: a noise clip determined by its path."""
    rng = np.random.default_rng(abs(hash(audio["path"])) % 2**32)
    return rng.standard_normal(int(2.5 * sampling_rate)).astype(np.float32) * 0.1


def _rows(transform: ClipTransform, n: int = 4) -> list[dict]:
    batch = transform({"audio": [{"path": f"clip{i}.wav", "bytes": None} for i in range(n)], "label": list(range(n))})
    return [{key: values[i] for key, values in batch.items()} for i in range(n)]


@pytest.fixture(scope="module")
def collator() -> TrainingCollator:
    extractor = WhisperFeatureExtractor(chunk_length=int(WINDOW_SECONDS))
    return TrainingCollator(BatchFeaturizer(extractor, "whisper", uses_attention_mask=False))


def test_spec_augment_zeroes_time_and_frequency_bands_only():
    features = torch.rand(80, 200) + 1.0  # nothing is zero before masking
    masked = spec_augment(features, 0.2, np.random.default_rng(0))
    zero = masked == 0
    masked_frames = zero.all(dim=0)
    masked_bins = zero.all(dim=1)
    expected_time_masks = round(0.2 * 200 / TIME_MASK_FRAMES)  # 2
    assert 0 < int(masked_frames.sum()) <= expected_time_masks * TIME_MASK_FRAMES
    assert 0 < int(masked_bins.sum()) <= FREQUENCY_MASKS * FREQUENCY_MASK_BINS
    # every zero lies in a masked frame or bin; everything else is the input unchanged
    assert torch.equal(zero, masked_frames[None, :] | masked_bins[:, None])
    assert torch.equal(masked[~zero], features[~zero])
    assert not (features == 0).any()  # the input itself is left alone


def test_training_rows_are_masked_and_evaluation_rows_are_not(collator):
    plain = ClipTransform(_decode, RATE_HZ, WINDOW_SECONDS, "start")
    augmented = ClipTransform(_decode, RATE_HZ, WINDOW_SECONDS, "start", spec_augment=0.2)
    reference = collator(_rows(plain))["input_features"]
    batch = collator(_rows(augmented))
    assert torch.equal(batch["labels"], torch.arange(4))
    changed = batch["input_features"] != reference
    assert changed.any(dim=(1, 2)).all()  # every training clip got masks
    assert (batch["input_features"][changed] == 0).all()  # and only masks: the rest equals the plain features
    frames_masked = (batch["input_features"] == 0).all(dim=1).float().mean(dim=1)
    assert ((frames_masked > 0.05) & (frames_masked <= 0.2 + 1e-6)).all()


def test_masks_depend_on_the_clip_and_epoch_not_on_the_batch(collator):
    transform = ClipTransform(_decode, RATE_HZ, WINDOW_SECONDS, "start", seed=3, spec_augment=0.2)
    together = collator(_rows(transform))["input_features"]
    rows = _rows(transform)
    one_by_one = torch.cat([collator([row])["input_features"] for row in reversed(rows)]).flip(0)
    assert torch.equal(together, one_by_one)
    transform.epoch = 1
    assert not torch.equal(collator(_rows(transform))["input_features"], together)


def test_raw_sample_models_are_not_masked_by_the_collator():
    from transformers import Wav2Vec2FeatureExtractor

    collate = TrainingCollator(BatchFeaturizer(Wav2Vec2FeatureExtractor(), "wav2vec2", uses_attention_mask=False))
    rows = _rows(ClipTransform(_decode, RATE_HZ, WINDOW_SECONDS, "start", spec_augment=0.2))
    plain = _rows(ClipTransform(_decode, RATE_HZ, WINDOW_SECONDS, "start"))
    assert torch.equal(collate(rows)["input_values"], collate(plain)["input_values"])


def test_spec_augment_option_is_checked_and_off_in_the_seed_preset():
    assert resolve_options("default", {}).spec_augment == pytest.approx(0.2)
    assert resolve_options("seed", {}).spec_augment == 0.0
    with pytest.raises(ConfigError, match="--spec-augment"):
        resolve_options("default", {"spec_augment": 1.5})


def test_a_clip_is_named_by_its_row_so_moving_the_data_changes_nothing():
    """Two copies of one clip at different paths: the same row number gives the same random crop and masks."""
    here = {"audio": [{"path": "/data/a/clip.wav", "bytes": None}], "label": [0], CLIP_INDEX_COLUMN: [5]}
    moved = {"audio": [{"path": "/elsewhere/clip.wav", "bytes": None}], "label": [0], CLIP_INDEX_COLUMN: [5]}
    same_noise = lambda audio, rate: _decode({"path": "clip.wav"}, rate)  # the same samples wherever it lives
    transform = ClipTransform(same_noise, RATE_HZ, 1.0, "random", seed=1, speed_perturbation=0.1, spec_augment=0.2)
    a, b = transform(here), transform(moved)
    np.testing.assert_array_equal(a["samples"][0], b["samples"][0])
    assert a["mask_seed"] == b["mask_seed"]
    unnamed = {key: value for key, value in moved.items() if key != CLIP_INDEX_COLUMN}  # then the path names it
    assert not np.array_equal(transform(unnamed)["samples"][0], a["samples"][0])
