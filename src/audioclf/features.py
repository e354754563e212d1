"""Features: the windows a clip is cut into, and the model inputs made of a batch of windows.

One module owns every number of a clip's geometry: Whisper's fixed frames and window, the window and hop that
inference cuts long recordings into (`WindowPlan`), training's crops, and the two featurizers, torch
(`BatchFeaturizer`, the model's own transformers feature extractor, for training and the torch backend) and numpy
(`NumpyFeatures`, for the ONNX backend, equal to transformers' extractors). torch is imported only where a torch
tensor is made, so the ONNX backend runs without it.

Training decodes lazily: a dataset transform decodes and crops each row when the data loader asks for it, and the
collator runs the featurizer on the batch. Nothing holds the whole corpus in RAM.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import soxr

from audioclf.config import CROPS, DEFAULT_HOP_FRACTION, DEFAULT_WINDOW_SECONDS
from audioclf.errors import ConfigError

if TYPE_CHECKING:
    import torch

# --- Whisper's geometry: what its feature extractor and encoder fix, each number once --------------------------
WHISPER_SAMPLING_RATE = 16_000  # Hz; every Whisper model hears 16 kHz audio
WHISPER_N_FFT = 400  # samples per STFT window: 25 ms at 16 kHz
WHISPER_HOP_SAMPLES = 160  # samples between log-mel frames: 10 ms at 16 kHz, so 100 frames per second
WHISPER_MEL_FRAMES_PER_SECOND = WHISPER_SAMPLING_RATE // WHISPER_HOP_SAMPLES  # 100
WHISPER_FRAMES_PER_POSITION = 2  # conv2 has stride 2: two log-mel frames per encoder position
WHISPER_POSITIONS_PER_SECOND = WHISPER_MEL_FRAMES_PER_SECOND // WHISPER_FRAMES_PER_POSITION  # 50
WHISPER_MAX_WINDOW_SECONDS = 30  # the released models' chunk_length: 1500 positions, the longest window there is
WHISPER_MEL_MAX_HERTZ = 8_000.0  # top of the mel filter bank: half of 16 kHz
WHISPER_LOG_MEL_RANGE = 8.0  # log10 units kept below each clip's loudest frame (Whisper's dynamic range floor)

CLIP_INDEX_COLUMN = "clip_index"  # a training split's row numbers: what names a clip for its random draws
SPEED_RATE_HZ = 16_000  # nominal rate for speed changes; only the ratio to round(rate * factor) matters
TIME_MASK_FRAMES = 20  # SpecAugment time mask: 20 log-mel frames, 0.2 s at WHISPER_MEL_FRAMES_PER_SECOND
FREQUENCY_MASKS = 2  # SpecAugment frequency masks per clip, each over FREQUENCY_MASK_BINS mel bins
FREQUENCY_MASK_BINS = 10  # of Whisper's 80
NOISE_COLOURS = ("white", "pink")  # generated noise; recordings from --noise-folder are a third kind when given


def whisper_window_seconds(max_source_positions: int) -> float:
    """The fixed input window of a Whisper encoder with this many positions (1500 -> 30 s)."""
    return max_source_positions / WHISPER_POSITIONS_PER_SECOND


def whisper_positions(window_seconds: int) -> int:
    """Encoder positions of a Whisper window of whole seconds (30 -> 1500)."""
    return int(window_seconds) * WHISPER_POSITIONS_PER_SECOND


def inference_window_seconds(fixed_seconds: float | None, trained_seconds: float | None = None) -> float:
    """The window inference cuts recordings into, by default: the model's fixed window (Whisper), else
    DEFAULT_WINDOW_SECONDS, or the training window where that is longer. The one default every door uses."""
    if fixed_seconds is not None:
        return float(fixed_seconds)
    return max(DEFAULT_WINDOW_SECONDS, float(trained_seconds or 0.0))


@dataclass(frozen=True)
class WindowPlan:
    """How a recording is cut into the windows a model scores: `window_samples` long, `hop_samples` apart, at
    `sampling_rate`. A recording no longer than one window is one window, itself (the pipeline's input); a longer
    one gets windows hop apart, the last ending at its end, so the tail is covered."""

    window_samples: int
    hop_samples: int
    sampling_rate: int

    @classmethod
    def resolve(cls, sampling_rate: int, fixed_seconds: float | None, window_seconds: float | None = None,
                hop_seconds: float | None = None, trained_seconds: float | None = None) -> WindowPlan:
        """The plan for a model: its fixed window (Whisper; asking for another is an error) or `window_seconds`,
        else inference_window_seconds; the hop as asked, else DEFAULT_HOP_FRACTION of the window."""
        if fixed_seconds is not None and window_seconds is not None and not math.isclose(window_seconds, fixed_seconds):
            raise ConfigError(f"--window-seconds {window_seconds:g}: this model's input window is fixed at "
                              f"{fixed_seconds:g} s (leave the flag out)")
        window = float(window_seconds) if window_seconds is not None else inference_window_seconds(fixed_seconds,
                                                                                                    trained_seconds)
        if not window > 0:
            raise ConfigError(f"--window-seconds {window:g}: must be positive")
        hop = float(hop_seconds) if hop_seconds is not None else window * DEFAULT_HOP_FRACTION
        if not 0 < hop <= window:
            raise ConfigError(f"--hop-seconds {hop:g}: must be positive and at most the window ({window:g} s)")
        return cls(max(1, round(window * sampling_rate)), max(1, round(hop * sampling_rate)), int(sampling_rate))

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sampling_rate

    @property
    def hop_seconds(self) -> float:
        return self.hop_samples / self.sampling_rate

    def spans(self, n_samples: int) -> list[tuple[int, int]]:
        """(start, end) sample spans of the windows of a recording of n_samples."""
        return window_spans(n_samples, self.window_samples, self.hop_samples)

    def cut(self, samples: np.ndarray) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
        """The spans of a recording held in memory, and the windows themselves (views, not copies)."""
        spans = self.spans(len(samples))
        return spans, [samples[start:end] for start, end in spans]

    def stream(self, blocks: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """(start, samples) of the same windows, cut from a stream of blocks while it is read."""
        return stream_windows(blocks, self.window_samples, self.hop_samples)


def window_spans(n_samples: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, end) sample spans of windows hopping over a clip; the last ends at the clip's end, so the tail is
    covered. A clip no longer than one window is one span: itself."""
    if n_samples <= window:
        return [(0, n_samples)]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return [(start, start + window) for start in starts]


def stream_windows(blocks: Iterable[np.ndarray], window: int, hop: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, samples) of the windows `window_spans` gives, cut from a stream of blocks while it is read; only
    about one window of samples is held at a time."""
    buffer = np.zeros(0, dtype=np.float32)
    buffer_start = 0  # sample index of buffer[0] in the recording
    next_start = 0
    last_end = 0
    total = 0
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        total += len(block)
        while next_start + window <= total:
            offset = next_start - buffer_start
            yield next_start, buffer[offset : offset + window].copy()
            last_end = next_start + window
            next_start += hop
        # keep what the next window, or the final window ending at the end, may still need
        keep_from = max(buffer_start, min(next_start, total - window))
        buffer = buffer[keep_from - buffer_start :]
        buffer_start = keep_from
    if total == 0:
        return
    if last_end == 0:  # shorter than one window: the whole recording
        yield 0, buffer
    elif last_end < total:
        yield total - window, buffer[len(buffer) - window :].copy()


# --- training crops -------------------------------------------------------------------------------------------


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


def shift_in_time(samples: np.ndarray, shift_samples: int) -> np.ndarray:
    """A clip moved later by shift_samples (silence put before it) or, for a negative shift, earlier (its start cut
    off; at least its last sample is kept)."""
    if shift_samples >= 0:
        return np.concatenate([np.zeros(shift_samples, dtype=np.float32), samples])
    return samples[min(-shift_samples, len(samples) - 1):]


def coloured_noise(n_samples: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """float32 Gaussian noise of unit RMS: white (flat spectrum) or pink (power falling as 1/frequency, equal power
    per octave), shape (n_samples,)."""
    white = rng.standard_normal(n_samples)
    if colour == "white":
        noise = white
    elif colour == "pink":
        spectrum = np.fft.rfft(white)
        bins = np.arange(len(spectrum), dtype=np.float64)
        spectrum[1:] /= np.sqrt(bins[1:])  # amplitude as 1/sqrt(f): power as 1/f
        spectrum[0] = 0.0
        noise = np.fft.irfft(spectrum, n_samples)
    else:
        raise ValueError(f"noise colour must be one of {NOISE_COLOURS}, not {colour!r}")
    rms = np.sqrt(np.mean(noise**2))
    return (noise / rms if rms > 0 else noise).astype(np.float32)


def add_noise(samples: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """samples plus noise (as long, or longer: its start is used) scaled so that the clip's mean power over its
    noise's is snr_db decibels. A silent clip is returned as it is (no level to set the noise by)."""
    samples = np.asarray(samples, dtype=np.float32)
    signal_power = float(np.mean(samples.astype(np.float64) ** 2)) if len(samples) else 0.0
    noise = np.asarray(noise[: len(samples)], dtype=np.float64)
    noise_power = float(np.mean(noise**2)) if len(noise) else 0.0
    if signal_power == 0.0 or noise_power == 0.0:
        return samples
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (samples + scale * noise).astype(np.float32)


def _noise_piece(recording: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """n_samples of a noise recording from a random place, the recording repeated where it is shorter."""
    if len(recording) < n_samples:
        recording = np.tile(recording, n_samples // len(recording) + 1)
    start = int(rng.integers(0, len(recording) - n_samples + 1))
    return recording[start : start + n_samples]


@dataclass(frozen=True, eq=False)  # it holds arrays
class Augmentation:
    """What training does to the waveform of each training clip, beyond speed and crop (ClipTransform). Every draw
    comes from the clip's own generator, so the same seed gives the same clips in any process and order.

    noise_share: share of clips that get noise (white, pink, or a piece of one of noise_recordings: each kind as
    often) at an SNR drawn uniformly in noise_snr_db; gain_db: a gain drawn uniformly in [-gain_db, +gain_db] dB;
    time_shift_seconds: the clip moved by up to this, earlier or later; mixup: Beta(mixup, mixup)'s alpha, the
    weight another training clip is mixed in with (its label too, in the same proportion)."""

    noise_share: float = 0.0
    noise_snr_db: tuple[float, float] = (5.0, 30.0)
    noise_recordings: tuple[np.ndarray, ...] = ()  # at the model's rate, read once from --noise-folder
    gain_db: float = 0.0
    time_shift_seconds: float = 0.0
    mixup: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.noise_share or self.gain_db or self.time_shift_seconds or self.mixup)

    def noise_kinds(self) -> tuple[str, ...]:
        return NOISE_COLOURS + (("recording",) if self.noise_recordings else ())

    def noisy(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The clip with gain and noise as drawn from rng (draws are made only for the augmentations that are on)."""
        if self.gain_db:
            samples = (samples * 10.0 ** (rng.uniform(-self.gain_db, self.gain_db) / 20.0)).astype(np.float32)
        if self.noise_share and rng.random() < self.noise_share:
            kinds = self.noise_kinds()
            kind = kinds[int(rng.integers(len(kinds)))]
            snr_db = rng.uniform(*self.noise_snr_db)
            if kind == "recording":
                recording = self.noise_recordings[int(rng.integers(len(self.noise_recordings)))]
                noise = _noise_piece(recording, len(samples), rng)
            else:
                noise = coloured_noise(len(samples), kind, rng)
            samples = add_noise(samples, noise, snr_db)
        return samples


def augmentation_from(options, decode: Callable[[dict, int], np.ndarray] | None = None,
                      sampling_rate: int | None = None) -> Augmentation:
    """The Augmentation that TrainOptions ask for; --noise-folder's recordings decoded with `decode` at
    `sampling_rate` (every audio file under it, in sorted order, so every process draws from the same list)."""
    recordings: tuple[np.ndarray, ...] = ()
    if options.noise_folder:
        recordings = read_noise_folder(options.noise_folder, decode, sampling_rate)
    return Augmentation(noise_share=options.noise_share, noise_snr_db=(options.noise_min_snr_db, options.noise_max_snr_db),
                        noise_recordings=recordings, gain_db=options.gain_db,
                        time_shift_seconds=options.time_shift_seconds, mixup=options.mixup)


def read_noise_folder(folder, decode, sampling_rate: int) -> tuple[np.ndarray, ...]:
    """Every audio file under `folder` (by extension), decoded, in sorted order; a ConfigError naming --noise-folder
    where there is no such folder, or no audio in it, or a file that cannot be read."""
    from pathlib import Path

    from audioclf.data import AUDIO_EXTENSIONS
    from audioclf.errors import AudioLoadError

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--noise-folder {folder}: no such folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not paths:
        raise ConfigError(f"--noise-folder {folder}: holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    recordings = []
    for path in paths:
        try:
            samples = decode({"path": str(path), "bytes": None}, sampling_rate)
        except AudioLoadError as e:
            raise ConfigError(f"--noise-folder {folder}: {e}") from e
        if len(samples) == 0 or not np.any(samples):
            raise ConfigError(f"--noise-folder {folder}: {path.name} is silent; a noise recording needs some sound")
        recordings.append(samples)
    return tuple(recordings)


class ClipTransform:
    """A `Dataset.set_transform` callable: decodes each row's audio, resamples, crops to the window.

    Returns columns `samples` (float32 arrays) and `label`. A random crop and speed are drawn from a generator
    seeded by (seed, epoch, clip), so a run with the same seed sees the same crops, each epoch sees different ones,
    and a clip gets the same crop whichever process decodes it and in whatever order: one process with batches of
    8 and two with batches of 4 train on the same samples. The trainer sets `epoch` as each epoch begins. A clip is
    named by its row in the split (a CLIP_INDEX_COLUMN the trainer adds), so the same data gives the same run
    wherever it is stored; rows without one are named by their path and bytes.

    `augmentation` (time shift, mixup, gain, noise, in that order, after speed) draws from the same generator.
    Mixup needs `partners`: the split's rows (`audio`, `label`) by row number, without this transform; a mixed
    row also carries `mix_label` and `mix_weight`, the other clip's label and weight, for TrainingCollator.
    """

    def __init__(self, decode: Callable[[dict, int], np.ndarray], sampling_rate: int, window_seconds: float | None,
                 how: str, seed: int = 0, speed_perturbation: float = 0.0, spec_augment: float = 0.0,
                 augmentation: Augmentation | None = None, partners=None):
        self.decode = decode
        self.speed_perturbation = speed_perturbation
        self.spec_augment = spec_augment
        self.augmentation = augmentation or Augmentation()
        if self.augmentation.mixup and (partners is None or len(partners) < 2):
            raise ConfigError("--mixup: needs at least two training clips to mix")
        self.partners = partners
        self.sampling_rate = sampling_rate
        self.length = None if window_seconds is None else window_samples(window_seconds, sampling_rate)
        self.how = how
        self.seed = seed
        self.epoch = 0

    def __call__(self, batch: dict) -> dict:
        augment = self.augmentation
        random = self.speed_perturbation or self.how == "random" or self.spec_augment or augment.active
        clips, mask_seeds, mix_labels, mix_weights = [], [], [], []
        keys = batch.get(CLIP_INDEX_COLUMN) or [None] * len(batch["audio"])
        for audio, key in zip(batch["audio"], keys):
            samples = self.decode(audio, self.sampling_rate)
            rng = np.random.default_rng([self.seed, self.epoch, clip_key(audio) if key is None else key]) if random else None
            if self.speed_perturbation:
                samples = change_speed(samples, rng.uniform(1 - self.speed_perturbation, 1 + self.speed_perturbation))
            if augment.time_shift_seconds:
                shift = rng.uniform(-augment.time_shift_seconds, augment.time_shift_seconds)
                samples = shift_in_time(samples, int(round(shift * self.sampling_rate)))
            clip = samples if self.length is None else crop(samples, self.length, self.how, rng)
            if augment.mixup:
                clip, mix_label, mix_weight = self._mixed(clip, key, rng)
                mix_labels.append(mix_label)
                mix_weights.append(mix_weight)
            clips.append(augment.noisy(clip, rng) if augment.active else clip)
            if self.spec_augment:
                mask_seeds.append(int(rng.integers(2**63)))
        out = {"samples": clips, "label": batch["label"]}
        if self.spec_augment:  # the collator masks the features of rows that carry a seed (training rows only)
            out["mask_share"] = [self.spec_augment] * len(clips)
            out["mask_seed"] = mask_seeds
        if augment.mixup:
            out["mix_label"] = mix_labels
            out["mix_weight"] = mix_weights
        return out

    def _mixed(self, clip: np.ndarray, key, rng: np.random.Generator) -> tuple[np.ndarray, int, float]:
        """The clip mixed with another training clip drawn from rng: (1 - w) * clip + w * other, w the smaller of
        a Beta(mixup, mixup) draw and 1 minus it, so the clip itself always weighs most; (mix, other's label, w)."""
        if key is None:
            raise ValueError(f"mixup names clips by their row ({CLIP_INDEX_COLUMN}); these rows have none")
        n = len(self.partners)
        other = int(rng.integers(n - 1))
        other += other >= int(key)  # any clip but this one
        row = self.partners[other]
        partner = self.decode(row["audio"], self.sampling_rate)
        partner = partner if self.length is None else crop(partner, self.length, self.how, rng)
        weight = float(rng.beta(self.augmentation.mixup, self.augmentation.mixup))
        weight = min(weight, 1.0 - weight)
        mixed = np.zeros(max(len(clip), len(partner)), dtype=np.float32)
        mixed[: len(clip)] += (1.0 - weight) * clip
        mixed[: len(partner)] += weight * partner
        return mixed, int(row["label"]), weight


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


# --- numpy features (the ONNX backend's; equal to transformers' extractors, see tests/test_export.py) ---------------


class NumpyFeatures:
    """Model inputs from clips, as numpy arrays, from a saved `preprocessor_config.json`.

    Whisper: clips padded or cut to the window, then the log-mel spectrogram (periodic Hann STFT, Slaney mel filters,
    log10, floor at max - WHISPER_LOG_MEL_RANGE, scaled by (x + 4) / 4). wav2vec2 family: each clip normalised to zero mean and unit
    variance, then zero-padded to the longest, with an attention mask for models that take one.
    """

    def __init__(self, preprocessor: dict, model_type: str, uses_attention_mask: bool):
        self.model_type = model_type
        self.uses_attention_mask = uses_attention_mask
        self.sampling_rate = int(preprocessor.get("sampling_rate", WHISPER_SAMPLING_RATE))
        self.padding_value = float(preprocessor.get("padding_value", 0.0))
        self.do_normalize = bool(preprocessor.get("do_normalize", False))
        if model_type == "whisper":
            self.n_fft = int(preprocessor.get("n_fft", WHISPER_N_FFT))
            self.hop_length = int(preprocessor.get("hop_length", WHISPER_HOP_SAMPLES))
            self.n_samples = int(preprocessor.get("chunk_length", WHISPER_MAX_WINDOW_SECONDS)) * self.sampling_rate
            self.mel_filters = mel_filters(self.n_fft, int(preprocessor["feature_size"]), self.sampling_rate)
            self.window = hann_window(self.n_fft)
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()

    def __call__(self, clips: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        if self.model_type == "whisper":
            # one thread for numpy's BLAS: its threads would fight the model's for the same cores
            with self._blas.limit(limits=1, user_api="blas"):
                return {"input_features": self.log_mel(clips)}
        values = [normalize(clip) if self.do_normalize else np.asarray(clip, dtype=np.float32) for clip in clips]
        longest = max(len(v) for v in values)
        batch = np.full((len(values), longest), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(values), longest), dtype=np.int64)
        for i, v in enumerate(values):
            batch[i, : len(v)] = v
            mask[i, : len(v)] = 1
        inputs = {"input_values": batch}
        if self.uses_attention_mask:
            inputs["attention_mask"] = mask
        return inputs

    def log_mel(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """(clips, n_mels, frames) log-mel features of clips padded or cut to the window."""
        samples = np.full((len(clips), self.n_samples), self.padding_value, dtype=np.float64)
        for i, clip in enumerate(clips):
            length = min(len(clip), self.n_samples)
            samples[i, :length] = clip[:length]
        edge = self.n_fft // 2
        padded = np.pad(samples, ((0, 0), (edge, edge)), mode="reflect")  # torch.stft(center=True)
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft, axis=-1)[:, :: self.hop_length]
        power = np.abs(np.fft.rfft(frames * self.window, axis=-1)) ** 2
        power = power[:, :-1]  # the last frame is dropped, as Whisper does
        mel = (power.reshape(-1, power.shape[-1]) @ self.mel_filters).reshape(len(clips), power.shape[1], -1)
        log_spec = np.log10(np.maximum(mel, 1e-10))
        log_spec = np.maximum(log_spec, log_spec.max(axis=(1, 2), keepdims=True) - WHISPER_LOG_MEL_RANGE)  # per clip
        return ((log_spec + 4.0) / 4.0).transpose(0, 2, 1).astype(np.float32)


def normalize(clip: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance, computed in float32 exactly as Wav2Vec2FeatureExtractor does."""
    clip = np.asarray(clip, dtype=np.float32)
    return (clip - clip.mean()) / np.sqrt(clip.var() + 1e-7)


def hann_window(length: int) -> np.ndarray:
    """The periodic Hann window torch.hann_window gives."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def _hertz_to_mel(hertz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hertz = np.asarray(hertz, dtype=np.float64)
    mels = 3.0 * hertz / 200.0
    log_region = hertz >= 1000.0
    mels[log_region] = 15.0 + np.log(hertz[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    hertz = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    hertz[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - 15.0))
    return hertz


def mel_filters(n_fft: int, n_mels: int, sampling_rate: int, max_hertz: float = WHISPER_MEL_MAX_HERTZ) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape (n_fft // 2 + 1, n_mels), as Whisper's extractor builds them."""
    fft_hertz = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)
    edges = _mel_to_hertz(np.linspace(_hertz_to_mel(np.array([0.0]))[0], _hertz_to_mel(np.array([max_hertz]))[0], n_mels + 2))
    slopes = edges[None, :] - fft_hertz[:, None]
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[None, :]


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

    Rows mixed by mixup get soft labels, (rows, num_labels) probabilities, which the training loss takes as they are.
    Rows from a training transform with `spec_augment` carry a mask seed; their log-mel features (Whisper) are
    masked with SpecAugment, drawn from that seed, so a clip gets the same masks whichever process collates it.
    Evaluation rows carry none and are left as they are. Models fed raw samples (the wav2vec2 family) mask
    their own hidden states while training (`mask_time_prob` in their config), so nothing is done for them here.
    """

    def __init__(self, featurizer: BatchFeaturizer, num_labels: int | None = None):
        self.featurizer = featurizer
        self.num_labels = num_labels  # for mixed rows' soft labels

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        import torch

        batch = self.featurizer([row["samples"] for row in rows])
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        if rows and rows[0].get("mix_label") is not None:  # mixup: each row's two labels, by their weights
            if self.num_labels is None:
                raise ValueError("mixed rows need the collator's num_labels for their soft labels")
            soft = torch.zeros(len(rows), self.num_labels, dtype=torch.float32)
            for i, row in enumerate(rows):
                soft[i, row["label"]] += 1.0 - row["mix_weight"]
                soft[i, row["mix_label"]] += row["mix_weight"]
            batch["labels"] = soft
        if "input_features" in batch and rows and rows[0].get("mask_seed") is not None:
            batch["input_features"] = torch.stack([
                spec_augment(features, row["mask_share"], np.random.default_rng(row["mask_seed"]))
                for features, row in zip(batch["input_features"], rows)
            ])
        return batch
