"""The one way audio becomes samples: soundfile decodes, channels are averaged, soxr resamples.

No torchcodec, no ffmpeg subprocess. Every failure is an `AudioLoadError` naming the source and the reason.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Union

import numpy as np
import soundfile as sf
import soxr

from audioclf.errors import AudioLoadError

AudioSource = Union[str, Path, bytes, bytearray, memoryview]

MIN_SAMPLING_RATE = 1_000  # Hz; below this nothing is speech or sound worth classifying
MAX_SAMPLING_RATE = 768_000  # Hz; the highest rate real converters produce
STREAM_BLOCK_FRAMES = 65_536  # frames read at a time from a long recording (about 4 s at 16 kHz)
RESAMPLE_QUALITY = "HQ"  # soxr's high-quality preset, the same one its `resample()` defaults to
# Sizes at or above this are "length unknown" placeholders written by streaming writers
# (ffmpeg to a pipe writes 0xFFFFFFFF, arecord 0x7FFFF000), not a promise of that many bytes.
STREAMING_PLACEHOLDER_BYTES = 0x7FFF_F000
# libsndfile logs "data : 16000 (should be 15990)" when a WAV/AIFF/CAF/AU data chunk runs past the end of the file,
# then silently shortens the clip to what is there.
_SHORT_DATA_CHUNK = re.compile(r"^\s*(?:data|SSND|Data Size)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)


@dataclass(frozen=True)
class AudioInfo:
    """What decoding a clip found, before any downmix or resampling."""

    sampling_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.sampling_rate


def describe_source(source: AudioSource, name: str | None = None) -> str:
    """How a source is named in messages: its path, or the given name, or '<N bytes>'."""
    if name is not None:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{len(source)} bytes>"


def _open(source: AudioSource, where: str) -> sf.SoundFile:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise AudioLoadError(where, "file not found")
        if path.is_dir():
            raise AudioLoadError(where, "is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioLoadError(where, "empty file (0 bytes)")
        target: object = str(path)
    else:
        if len(source) == 0:
            raise AudioLoadError(where, "empty file (0 bytes)")
        target = io.BytesIO(bytes(source))
    try:
        return sf.SoundFile(target)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioLoadError(where, f"not a readable audio file ({_reason(e)})") from e
    except OSError as e:
        raise AudioLoadError(where, f"cannot be read ({e.strerror or e})") from e


def _reason(e: Exception) -> str:
    text = str(e)
    # libsndfile prefixes its message with the file name we already report
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    return text.strip() or type(e).__name__


def read_audio(source: AudioSource, name: str | None = None) -> tuple[np.ndarray, AudioInfo]:
    """Decode a whole clip. Returns float32 samples shaped (frames, channels) and what was found.

    Raises AudioLoadError for a missing, empty, non-audio, truncated or corrupt file, non-finite samples,
    or an absurd sampling rate.
    """
    where = describe_source(source, name)
    with _open(source, where) as f:
        info = AudioInfo(sampling_rate=int(f.samplerate), channels=int(f.channels), frames=int(f.frames), format=f.format)
        if not MIN_SAMPLING_RATE <= info.sampling_rate <= MAX_SAMPLING_RATE:
            raise AudioLoadError(
                where,
                f"absurd sampling rate {info.sampling_rate} Hz (expected {MIN_SAMPLING_RATE}-{MAX_SAMPLING_RATE} Hz)",
            )
        if info.channels < 1:
            raise AudioLoadError(where, "no audio channels")
        log = f.extra_info
        missing = _missing_data_bytes(log)
        if missing:
            raise AudioLoadError(
                where, f"truncated or corrupt audio (data chunk is {missing} bytes shorter than its header says)"
            )
        try:
            samples = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioLoadError(where, f"truncated or corrupt audio ({_reason(e)})") from e
    if samples.shape[0] == 0:
        if "File ended unexpectedly" in log:  # an Ogg stream cut off before its last page
            raise AudioLoadError(where, "truncated or corrupt audio (stream ends without its end-of-stream page)")
        raise AudioLoadError(where, "empty audio (0 samples)")
    # libsndfile returns what it could read of a cut-off file; the header still promises the rest
    if 0 < info.frames != samples.shape[0]:
        raise AudioLoadError(where, f"truncated or corrupt audio (header says {info.frames} frames, read {samples.shape[0]})")
    if not np.isfinite(samples).all():
        raise AudioLoadError(where, "non-finite samples (NaN or infinity)")
    return samples, AudioInfo(info.sampling_rate, info.channels, int(samples.shape[0]), info.format)


def _missing_data_bytes(log: str) -> int:
    """How many bytes of sample data the header promises beyond the end of the file (0 when none are missing)."""
    for match in _SHORT_DATA_CHUNK.finditer(log):
        declared, present = int(match.group(1)), int(match.group(2))
        if present < declared < STREAMING_PLACEHOLDER_BYTES:
            return declared - present
    return 0


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array into float32 (frames,)."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono float32 samples with soxr; a no-op when the rates agree."""
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, from_rate, to_rate, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def load_audio(source: AudioSource, sampling_rate: int, name: str | None = None) -> np.ndarray:
    """Turn a path or raw bytes into float32 mono samples at `sampling_rate` Hz, shape (samples,)."""
    samples, info = read_audio(source, name)
    return resample(to_mono(samples), info.sampling_rate, sampling_rate)


def inspect_audio(source: AudioSource, name: str | None = None) -> AudioInfo:
    """Decode a clip fully (so corrupt data is found) and return what was found, without keeping samples."""
    return read_audio(source, name)[1]


def header_info(source: AudioSource, name: str | None = None) -> AudioInfo:
    """What a clip's header says (rate, channels, frames; frames may be 0 when unknown), without decoding it."""
    where = describe_source(source, name)
    with _open(source, where) as f:
        return AudioInfo(sampling_rate=int(f.samplerate), channels=int(f.channels), frames=int(f.frames), format=f.format)


def stream_audio(source: AudioSource, sampling_rate: int, name: str | None = None,
                 block_frames: int = STREAM_BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Float32 mono blocks at `sampling_rate` Hz of a recording, decoded and resampled a block at a time.

    The blocks joined are exactly what `load_audio` returns, and the same problems raise the same AudioLoadError
    (some only once the stream reaches them), but only one block is held at a time.
    """
    where = describe_source(source, name)
    with _open(source, where) as f:
        if not MIN_SAMPLING_RATE <= f.samplerate <= MAX_SAMPLING_RATE:
            raise AudioLoadError(
                where, f"absurd sampling rate {f.samplerate} Hz (expected {MIN_SAMPLING_RATE}-{MAX_SAMPLING_RATE} Hz)"
            )
        if f.channels < 1:
            raise AudioLoadError(where, "no audio channels")
        missing = _missing_data_bytes(f.extra_info)
        if missing:
            raise AudioLoadError(
                where, f"truncated or corrupt audio (data chunk is {missing} bytes shorter than its header says)"
            )
        resampler = None
        if f.samplerate != sampling_rate:
            resampler = soxr.ResampleStream(f.samplerate, sampling_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        frames = 0
        while True:
            try:
                block = f.read(block_frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioLoadError(where, f"truncated or corrupt audio ({_reason(e)})") from e
            if not np.isfinite(block).all():
                raise AudioLoadError(where, "non-finite samples (NaN or infinity)")
            frames += block.shape[0]
            last = block.shape[0] < block_frames
            mono = to_mono(block)
            out = resampler.resample_chunk(mono, last=last) if resampler is not None else mono
            if len(out):
                yield out.astype(np.float32, copy=False)
            if last:
                break
        if frames == 0:
            raise AudioLoadError(where, "empty audio (0 samples)")
        if 0 < f.frames != frames:
            raise AudioLoadError(where, f"truncated or corrupt audio (header says {f.frames} frames, read {frames})")
