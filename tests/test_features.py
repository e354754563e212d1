"""Training augmentation: SpecAugment on batches (what is masked, evaluation batches untouched), and noise, gain, time
shift and mixup on waveforms (level, SNR, spectrum); every draw the same per seed, epoch and clip, in any process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    Augmentation,
    TrainingCollator,
    add_noise,
    coloured_noise,
    read_noise_folder,
    shift_in_time,
    spec_augment,
)
from audioclf.testing import tone, write_clip

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


# --- waveform augmentation: noise, gain, time shift, mixup ---------------------------------------------------------


def _db(power_ratio: float) -> float:
    return 10 * np.log10(power_ratio)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def _band_power(x: np.ndarray, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    hertz = np.fft.rfftfreq(len(x), 1 / RATE_HZ)
    return float(spectrum[(hertz >= low_hz) & (hertz < high_hz)].sum())


def test_white_noise_is_flat_and_pink_noise_has_equal_power_per_octave():
    rng = np.random.default_rng(0)
    white, pink = coloured_noise(4 * RATE_HZ, "white", rng), coloured_noise(4 * RATE_HZ, "pink", rng)
    for noise in (white, pink):
        assert noise.dtype == np.float32 and _power(noise) == pytest.approx(1.0, rel=1e-5)
    octaves = [(250, 500), (1000, 2000), (4000, 8000)]
    pink_octaves = [_db(_band_power(pink, lo, hi)) for lo, hi in octaves]
    white_octaves = [_db(_band_power(white, lo, hi)) for lo, hi in octaves]
    assert max(pink_octaves) - min(pink_octaves) < 1.0  # 1/f: the same power in every octave
    # white: power per hertz is flat, so each octave (twice as wide) has 3 dB more, 6 dB over two octaves
    assert np.diff(white_octaves) == pytest.approx([6.02, 6.02], abs=0.5)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_noise_is_added_at_the_asked_snr(snr_db):
    clip = tone(440.0, 1.0, RATE_HZ, amplitude=0.3)
    noise = coloured_noise(len(clip) + 100, "pink", np.random.default_rng(1))  # longer: its start is used
    noisy = add_noise(clip, noise, snr_db)
    assert noisy.shape == clip.shape and noisy.dtype == np.float32
    assert _db(_power(clip) / _power(noisy - clip)) == pytest.approx(snr_db, abs=1e-3)
    silent = np.zeros(100, dtype=np.float32)
    np.testing.assert_array_equal(add_noise(silent, noise, snr_db), silent)  # no level to set noise by


def test_time_shift_puts_silence_before_or_cuts_the_start():
    clip = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(shift_in_time(clip, 3), np.r_[np.zeros(3), clip])
    np.testing.assert_array_equal(shift_in_time(clip, -4), clip[4:])
    np.testing.assert_array_equal(shift_in_time(clip, -20), clip[-1:])  # never empty


def _tone_decode(audio: dict, sampling_rate: int) -> np.ndarray:
    """Stand-in for clip_samples: a 1.5 s tone whose pitch is given by the clip's number in its path."""
    number = int(audio["path"].removeprefix("clip").removesuffix(".wav"))
    return tone(200.0 + 100 * number, 1.5, sampling_rate, amplitude=0.4)


def _named_rows(transform: ClipTransform, n: int = 4) -> dict:
    return transform({"audio": [{"path": f"clip{i}.wav", "bytes": None} for i in range(n)], "label": list(range(n)),
                      CLIP_INDEX_COLUMN: list(range(n))})


def test_gain_is_within_its_range_and_differs_per_clip_and_epoch():
    transform = ClipTransform(_tone_decode, RATE_HZ, WINDOW_SECONDS, "start", seed=2,
                              augmentation=Augmentation(gain_db=6.0))
    gains = []
    for epoch in range(3):
        transform.epoch = epoch
        out = _named_rows(transform)
        gains += [_db(_power(s) / _power(_tone_decode({"path": f"clip{i}.wav"}, RATE_HZ)))
                  for i, s in enumerate(out["samples"])]
    assert all(-6.0 <= g <= 6.0 for g in gains)
    assert len({round(g, 6) for g in gains}) == len(gains)  # every clip and epoch draws its own
    assert max(gains) - min(gains) > 3.0


def test_noise_share_and_snr_range_are_kept():
    augmentation = Augmentation(noise_share=0.5, noise_snr_db=(10.0, 20.0))
    transform = ClipTransform(_tone_decode, RATE_HZ, WINDOW_SECONDS, "start", seed=0, augmentation=augmentation)
    snrs = []
    for epoch in range(10):
        transform.epoch = epoch
        for i, samples in enumerate(_named_rows(transform)["samples"]):
            clean = _tone_decode({"path": f"clip{i}.wav"}, RATE_HZ)
            if not np.array_equal(samples, clean):
                snrs.append(_db(_power(clean) / _power(samples - clean)))
    assert 10 <= len(snrs) <= 30  # about half of 40 clips
    assert all(10.0 - 1e-3 <= snr <= 20.0 + 1e-3 for snr in snrs)


def test_noise_recordings_are_drawn_from_the_folder(tmp_path):
    hum = tone(50.0, 0.5, RATE_HZ, amplitude=0.2)  # shorter than the clips: repeated
    write_clip(tmp_path / "noise" / "hum.wav", hum, RATE_HZ)
    write_clip(tmp_path / "noise" / "sub" / "hiss.flac", coloured_noise(RATE_HZ, "white", np.random.default_rng(0)) * 0.1, RATE_HZ)
    (tmp_path / "noise" / "notes.txt").write_text("not audio")
    from audioclf.data import clip_samples

    recordings = read_noise_folder(tmp_path / "noise", clip_samples, RATE_HZ)
    assert [len(r) for r in recordings] == [RATE_HZ // 2, RATE_HZ]  # hum.wav, then sub/hiss.flac
    only_hum = Augmentation(noise_share=1.0, noise_snr_db=(0.0, 0.0), noise_recordings=recordings[:1])
    transform = ClipTransform(_tone_decode, RATE_HZ, WINDOW_SECONDS, "start", seed=0, augmentation=only_hum)
    kinds = set()
    for epoch in range(6):
        transform.epoch = epoch
        for i, samples in enumerate(_named_rows(transform)["samples"]):
            noise = samples - _tone_decode({"path": f"clip{i}.wav"}, RATE_HZ)
            low = _band_power(noise, 40, 60) / _band_power(noise, 0, RATE_HZ / 2)
            kinds.add("hum" if low > 0.99 else "generated")
    assert kinds == {"hum", "generated"}  # a piece of the recording, or white or pink noise


def test_a_bad_noise_folder_is_one_error_naming_the_flag(tmp_path):
    from audioclf.data import clip_samples

    with pytest.raises(ConfigError, match=rf"^--noise-folder {tmp_path / 'nope'}: no such folder$"):
        read_noise_folder(tmp_path / "nope", clip_samples, RATE_HZ)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=rf"^--noise-folder {tmp_path / 'empty'}: holds no audio files"):
        read_noise_folder(tmp_path / "empty", clip_samples, RATE_HZ)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"not a wav")
    with pytest.raises(ConfigError, match=rf"^--noise-folder {tmp_path / 'bad'}: .*x\.wav"):
        read_noise_folder(tmp_path / "bad", clip_samples, RATE_HZ)


class _Partners:
    """The split's rows by number, as train() gives mixup: audio and label."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"audio": {"path": f"clip{i}.wav", "bytes": None}, "label": i}


def test_mixup_mixes_another_clip_with_its_label_and_the_clip_weighs_most(collator):
    transform = ClipTransform(_tone_decode, RATE_HZ, WINDOW_SECONDS, "start", seed=0,
                              augmentation=Augmentation(mixup=0.4), partners=_Partners(4))
    out = _named_rows(transform)
    for i, (samples, other, weight) in enumerate(zip(out["samples"], out["mix_label"], out["mix_weight"])):
        assert other != i and 0.0 <= weight <= 0.5
        expected = (1 - weight) * _tone_decode({"path": f"clip{i}.wav"}, RATE_HZ) + weight * _tone_decode(
            {"path": f"clip{other}.wav"}, RATE_HZ)
        np.testing.assert_allclose(samples, expected, atol=1e-6)
    collate = TrainingCollator(collator.featurizer, num_labels=4)
    rows = [{key: values[i] for key, values in out.items()} for i in range(4)]
    labels = collate(rows)["labels"]
    assert labels.shape == (4, 4) and torch.allclose(labels.sum(dim=1), torch.ones(4))
    for i, row in enumerate(rows):
        assert labels[i, i] == pytest.approx(1 - row["mix_weight"]) and labels[i, row["mix_label"]] == pytest.approx(row["mix_weight"])


def test_mixup_needs_two_clips():
    with pytest.raises(ConfigError, match="--mixup"):
        ClipTransform(_tone_decode, RATE_HZ, WINDOW_SECONDS, "start", augmentation=Augmentation(mixup=0.2),
                      partners=_Partners(1))


EVERYTHING = dict(noise_share=0.7, noise_snr_db=(0.0, 20.0), gain_db=6.0, time_shift_seconds=0.3, mixup=0.3)


def _augmented_batch(seed: int, epoch: int, order: list[int]) -> list[np.ndarray]:
    transform = ClipTransform(_tone_decode, RATE_HZ, WINDOW_SECONDS, "random", seed=seed, speed_perturbation=0.1,
                              augmentation=Augmentation(**EVERYTHING), partners=_Partners(6))
    transform.epoch = epoch
    out = transform({"audio": [{"path": f"clip{i}.wav", "bytes": None} for i in order], "label": order,
                     CLIP_INDEX_COLUMN: order})
    return [out["samples"][order.index(i)] for i in sorted(order)]


def test_augmentation_depends_on_seed_epoch_and_clip_not_on_order_or_batch():
    reference = _augmented_batch(seed=5, epoch=1, order=[0, 1, 2, 3, 4, 5])
    shuffled = _augmented_batch(seed=5, epoch=1, order=[4, 2, 0, 5, 3, 1])
    halves = _augmented_batch(5, 1, [0, 1, 2]) + _augmented_batch(5, 1, [3, 4, 5])  # two processes' shares
    for a, b, c in zip(reference, shuffled, halves):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for other in (_augmented_batch(seed=6, epoch=1, order=list(range(6))),
                  _augmented_batch(seed=5, epoch=2, order=list(range(6)))):
        assert not any(np.array_equal(a, b) for a, b in zip(reference, other))


def test_augmented_clips_are_the_same_in_another_process(tmp_path):
    """A fresh interpreter (another hash seed, as each process of a multi-process run has) makes the same clips."""
    code = ("import numpy as np, sys; sys.path.insert(0, sys.argv[1]); import test_features as t; "
            "np.savez(sys.argv[2], *t._augmented_batch(5, 1, [5, 3, 1]))")
    out = tmp_path / "other.npz"
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(out)], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "123"})
    theirs = np.load(out)
    ours = _augmented_batch(5, 1, [1, 3, 5])
    assert len(theirs.files) == 3
    for i, mine in enumerate(ours):
        np.testing.assert_array_equal(theirs[f"arr_{i}"], mine)


def test_augmentation_options_are_checked():
    with pytest.raises(ConfigError, match=r"^--noise-min-snr-db 20: must be at most --noise-max-snr-db \(10\)$"):
        resolve_options("default", {"noise_min_snr_db": 20.0, "noise_max_snr_db": 10.0})
    with pytest.raises(ConfigError, match="--noise-folder noise: adds nothing with --noise-share 0"):
        resolve_options("default", {"noise_folder": "noise"})
    with pytest.raises(ConfigError, match="--gain-db"):
        resolve_options("default", {"gain_db": -1.0})
    seed = resolve_options("seed", {})
    assert (seed.noise_share, seed.gain_db, seed.time_shift_seconds, seed.mixup) == (0.0, 0.0, 0.0, 0.0)
