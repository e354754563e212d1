"""The one way audio becomes samples: soundfile decodes, channels are averaged, soxr resamples.

No torchcodec, no ffmpeg subprocess. Every failure is an `AudioLoadError` naming the source and the reason.

Every door decodes through one loop (`_decoded_blocks`): a clip is read STREAM_BLOCK_FRAMES frames at a time, each
block checked (finite, not absurdly loud), downmixed and resampled before the next is read, so memory is set by the
output (mono at the caller's rate), never by what the file holds (a 335 KB FLAC can declare 60 s of 8 channels at
655 kHz: 1.26 GB as float32). Callers with a length limit (`max_seconds`, the service's --max-audio-seconds) have
it checked from the header before any decoding, with a budget of decoded samples (frames x channels) for that
length, and again while decoding, for headers that do not give the length.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import soxr

from audioclf.errors import AudioLoadError, AudioTooLargeError, AudioTooLongError, UnsupportedAudioError, shown_path

AudioSource = Union[str, Path, bytes, bytearray, memoryview]

MIN_SAMPLING_RATE = 1_000  # Hz; below this nothing is speech or sound worth classifying
MAX_SAMPLING_RATE = 768_000  # Hz; the highest rate real converters produce
MAX_CHANNELS = 32  # 22.2 surround has 24 and third-order ambisonics 16; more is no recording anyone classifies
# Samples (frames x channels) decoded per second of audio a length limit allows: 192 kHz stereo, 96 kHz quad or
# 48 kHz 7.1 fit. Under the service's default 600 s that is 230,400,000 samples (0.9 GB of float32 if held at once;
# decoding holds one block of them).
MAX_INPUT_SAMPLES_PER_SECOND = 384_000
# Decoded samples beyond this magnitude are refused, not scaled: audio lies within [-1, 1] and float files may go a
# little over, but a peak of 1000 (+60 dBFS) is no recording; it is integer sample values (or garbage) stored as float.
# Such values would overflow the models' power spectra (x**2 passes float32's 3.4e38 at 1.8e19) into NaN scores.
# Scaling them down instead would give scores that the pipeline and every other tool disagree with.
MAX_SAMPLE_PEAK = 1e3
STREAM_BLOCK_FRAMES = 65_536  # frames read at a time (about 4 s at 16 kHz; at most 8 MiB with MAX_CHANNELS)
RESAMPLE_QUALITY = "HQ"  # soxr's high-quality preset, the same one its `resample()` defaults to
# libsndfile's frame count for a stream whose header does not give its length (a FLAC STREAMINFO total of 0)
UNKNOWN_FRAMES = 2**63 - 1
# Sizes at or above this are "length unknown" placeholders written by streaming writers
# (ffmpeg to a pipe writes 0xFFFFFFFF, arecord 0x7FFFF000), not a promise of that many bytes.
STREAMING_PLACEHOLDER_BYTES = 0x7FFF_F000
# libsndfile logs "data : 16000 (should be 15990)" when a WAV/AIFF/CAF/AU data chunk runs past the end of the file,
# then silently shortens the clip to what is there.
_SHORT_DATA_CHUNK = re.compile(r"^\s*(?:data|SSND|Data Size)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
# libsndfile logs these (Vorbis "Ogg:", Opus "Ogg :") when an Ogg stream's last complete page is not its
# end-of-stream page, or a partial page follows it: the file was cut off, and decodes short without an error.
_CUT_OGG = re.compile(r"^Ogg ?: (?:Last page lacks an end-of-stream bit|Junk after the last page"
                      r"|File ended unexpectedly)", re.MULTILINE)


@dataclass(frozen=True)
class AudioInfo:
    """What decoding a clip found, before any downmix or resampling. From `header_info`, `frames` is what the
    header says, 0 when it does not say."""

    sampling_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.sampling_rate


def describe_source(source: AudioSource, name: str | None = None) -> str:
    """How a source is named in messages: its path (as `shown_path` shows it), or the given name, or '<N bytes>'."""
    if name is not None:
        return shown_path(name)
    if isinstance(source, (str, Path)):
        return shown_path(source)
    return f"<{len(source)} bytes>"


# --- opening ------------------------------------------------------------------------------------


def _open(source: AudioSource, where: str) -> sf.SoundFile:
    if isinstance(source, (str, Path)):
        # bytes, not str: soundfile encodes a str path strictly, which fails for a file name that is not UTF-8
        path = os.fsencode(source)
        try:
            status = os.stat(path)
        except OSError as e:
            raise AudioLoadError(where, _missing_reason(path, e)) from None
        if stat.S_ISDIR(status.st_mode):
            raise AudioLoadError(where, "is a directory, not an audio file")
        if not stat.S_ISREG(status.st_mode):  # reading a FIFO would wait for a writer forever
            raise AudioLoadError(where, "not a regular file (a named pipe, socket or device)")
        if status.st_size == 0:
            raise AudioLoadError(where, "empty file (0 bytes)")
        target: object = path
    else:
        if len(source) == 0:
            raise AudioLoadError(where, "empty file (0 bytes)")
        target = io.BytesIO(bytes(source))
    try:
        return sf.SoundFile(target)
    except (sf.LibsndfileError, RuntimeError) as e:
        if isinstance(target, bytes) and not os.access(target, os.R_OK):
            raise AudioLoadError(where, "permission denied") from None
        if "malformed" in str(e):  # libsndfile knows the format, and the file breaks off or breaks its rules
            raise AudioLoadError(where, f"truncated or corrupt audio ({_reason(e)})") from e
        raise UnsupportedAudioError(where, f"not a readable audio file ({_reason(e)})") from e
    except OSError as e:
        raise AudioLoadError(where, f"cannot be read ({e.strerror or e})") from e


def _missing_reason(path: bytes, e: OSError) -> str:
    """Why `os.stat` could not find a file, as precisely as the error says."""
    if e.errno == errno.ENOENT:
        return "broken symbolic link (what it points to does not exist)" if os.path.islink(path) else "file not found"
    if e.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if e.errno == errno.ENOTDIR:
        return "file not found (a part of its path is a file, not a folder)"
    if e.errno == errno.EACCES:
        return "permission denied (a folder on its path cannot be searched)"
    return f"cannot be read ({e.strerror or e})"


def _reason(e: Exception) -> str:
    text = str(e)
    # libsndfile prefixes its message with the file name we already report
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    return text.strip() or type(e).__name__


def _checked_info(f: sf.SoundFile, where: str, max_seconds: float | None) -> AudioInfo:
    """What the header says, after refusing what no decoding should start on: unsupported rates or channel counts,
    files cut off before the end their header promises, and (with `max_seconds`) clips too long or too large."""
    frames = int(f.frames)
    info = AudioInfo(sampling_rate=int(f.samplerate), channels=int(f.channels),
                     frames=0 if frames >= UNKNOWN_FRAMES else frames, format=f.format)
    if not MIN_SAMPLING_RATE <= info.sampling_rate <= MAX_SAMPLING_RATE:
        raise UnsupportedAudioError(
            where, f"absurd sampling rate {info.sampling_rate} Hz (expected {MIN_SAMPLING_RATE}-{MAX_SAMPLING_RATE} Hz)")
    if info.channels < 1:
        raise AudioLoadError(where, "no audio channels")
    if info.channels > MAX_CHANNELS:
        raise UnsupportedAudioError(where, f"{info.channels} channels (at most {MAX_CHANNELS} are supported)")
    log = f.extra_info
    missing = _missing_data_bytes(log)
    if missing:
        raise AudioLoadError(where, f"truncated or corrupt audio (data chunk is {missing} bytes shorter than its header says)")
    if info.format == "OGG" and _CUT_OGG.search(log):
        raise AudioLoadError(where, "truncated or corrupt audio (the Ogg stream ends without its end-of-stream page)")
    if max_seconds is not None:
        if info.duration_seconds > max_seconds:
            raise AudioTooLongError(where, info.duration_seconds, max_seconds)
        _check_budget(info.frames, info, where, max_seconds)
    return info


def _check_budget(frames: int, info: AudioInfo, where: str, max_seconds: float) -> None:
    budget = int(max_seconds * MAX_INPUT_SAMPLES_PER_SECOND)
    if frames * info.channels > budget:
        raise AudioTooLargeError(
            where, f"too many samples to decode: {info.channels} channels x {frames:,} frames "
                   f"({frames / info.sampling_rate:.1f} s at {info.sampling_rate} Hz) is {frames * info.channels:,}; "
                   f"{max_seconds:g} s of audio may decode at most {budget:,} "
                   f"({MAX_INPUT_SAMPLES_PER_SECOND:,} a second, such as 192 kHz stereo or 48 kHz 7.1)")


def _missing_data_bytes(log: str) -> int:
    """How many bytes of sample data the header promises beyond the end of the file (0 when none are missing)."""
    for match in _SHORT_DATA_CHUNK.finditer(log):
        declared, present = int(match.group(1)), int(match.group(2))
        if present < declared < STREAMING_PLACEHOLDER_BYTES:
            return declared - present
    return 0


# --- the decoding loop --------------------------------------------------------------------------


def _decoded_blocks(f: sf.SoundFile, info: AudioInfo, where: str, block_frames: int,
                    max_seconds: float | None) -> Iterator[np.ndarray]:
    """Float32 blocks (frames, channels) of at most `block_frames` frames, each checked before it is handed on; at
    the end, the frames read are checked against the header. With `max_seconds`, decoding stops with an error as
    soon as it passes the limit or the sample budget (a header may not give the length, or may lie)."""
    limit_frames = None if max_seconds is None else int(max_seconds * info.sampling_rate)
    frames = 0
    while True:
        block = _read_block(f, block_frames, info.channels, where)
        if len(block):
            _check_samples(block, where)
            frames += len(block)
            if limit_frames is not None:
                if frames > limit_frames:
                    raise AudioTooLongError(where, frames / info.sampling_rate, max_seconds, known=False)
                _check_budget(frames, info, where, max_seconds)
            yield block
        if len(block) < block_frames:
            break
    if frames == 0:
        raise AudioLoadError(where, "empty audio (0 samples)")
    # libsndfile returns what it could read of a cut-off file; the header still promises the rest
    if info.frames and info.frames != frames:
        raise AudioLoadError(where, f"truncated or corrupt audio (header says {info.frames} frames, read {frames})")


def _read_block(f: sf.SoundFile, block_frames: int, channels: int, where: str) -> np.ndarray:
    # libsndfile's own read: SoundFile.read seeks to where it thinks the read ended after every read, and that seek
    # fails at the end of a FLAC whose header leaves the length unknown, losing the last block
    block = np.empty((block_frames, channels), dtype=np.float32)
    read = sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", sf._ffi.from_buffer(block)), block_frames)
    code = sf._snd.sf_error(f._file)
    if code:
        raise AudioLoadError(where, f"truncated or corrupt audio ({_reason(sf.LibsndfileError(code))})")
    return block[:read] if read < block_frames else block


def _check_samples(block: np.ndarray, where: str) -> None:
    peak = float(np.abs(block).max())  # NaN if any sample is NaN
    if not np.isfinite(peak):
        raise AudioLoadError(where, "non-finite samples (NaN or infinity)")
    if peak > MAX_SAMPLE_PEAK:
        raise AudioLoadError(where, f"absurd sample values (peak {peak:.3g}; audio lies within [-1, 1], and a peak "
                                    f"above {MAX_SAMPLE_PEAK:g} is refused)")


# --- public API ---------------------------------------------------------------------------------


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


def stream_audio(source: AudioSource, sampling_rate: int, name: str | None = None,
                 block_frames: int = STREAM_BLOCK_FRAMES, max_seconds: float | None = None) -> Iterator[np.ndarray]:
    """Float32 mono blocks at `sampling_rate` Hz of a recording, decoded, downmixed and resampled a block at a time.

    The blocks joined are exactly what `load_audio` returns, and the same problems raise the same AudioLoadError
    (some only once the stream reaches them), but only one block is held at a time. With `max_seconds`, a recording
    longer than that (AudioTooLongError) or with more samples to decode than its budget (AudioTooLargeError) is
    refused from its header, or as soon as decoding passes the limit where the header does not say.
    """
    where = describe_source(source, name)
    with _open(source, where) as f:
        info = _checked_info(f, where, max_seconds)
        resampler = None
        for block in _decoded_blocks(f, info, where, block_frames, max_seconds):
            mono = to_mono(block)
            if info.sampling_rate == sampling_rate:
                out = mono
            elif resampler is None and len(block) < block_frames:
                # the whole clip is this one block: soxr's one-shot call gives the same samples without a stream's
                # set-up (a fifth of the time of decoding a short clip)
                out = resample(mono, info.sampling_rate, sampling_rate)
            else:
                if resampler is None:
                    resampler = soxr.ResampleStream(info.sampling_rate, sampling_rate, 1, dtype="float32",
                                                    quality=RESAMPLE_QUALITY)
                out = resampler.resample_chunk(mono)
            if len(out):
                yield out
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                yield tail


def load_audio(source: AudioSource, sampling_rate: int, name: str | None = None,
               max_seconds: float | None = None) -> np.ndarray:
    """Turn a path or raw bytes into float32 mono samples at `sampling_rate` Hz, shape (samples,).

    Decoded a block at a time (`stream_audio`), so memory is set by the result, not by the file's rate or channels.
    Raises AudioLoadError (with `max_seconds`, AudioTooLongError or AudioTooLargeError) for audio it refuses: missing,
    empty, not audio, truncated or corrupt, an unsupported rate or channel count, non-finite samples or a peak above
    MAX_SAMPLE_PEAK.
    """
    blocks = list(stream_audio(source, sampling_rate, name, max_seconds=max_seconds))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def read_audio(source: AudioSource, name: str | None = None,
               max_seconds: float | None = None) -> tuple[np.ndarray, AudioInfo]:
    """Decode a whole clip at its own rate. Returns float32 samples shaped (frames, channels) and what was found.

    Refuses what `load_audio` refuses. The result is as large as the file's frames x channels: `load_audio` and
    `inspect_audio` hold only one block of that.
    """
    where = describe_source(source, name)
    with _open(source, where) as f:
        info = _checked_info(f, where, max_seconds)
        samples = np.concatenate(list(_decoded_blocks(f, info, where, STREAM_BLOCK_FRAMES, max_seconds)))
    return samples, AudioInfo(info.sampling_rate, info.channels, len(samples), info.format)


def inspect_audio(source: AudioSource, name: str | None = None, max_seconds: float | None = None) -> AudioInfo:
    """Decode a clip fully (so corrupt data is found) and return what was found, holding one block at a time."""
    where = describe_source(source, name)
    with _open(source, where) as f:
        info = _checked_info(f, where, max_seconds)
        frames = sum(len(block) for block in _decoded_blocks(f, info, where, STREAM_BLOCK_FRAMES, max_seconds))
    return AudioInfo(info.sampling_rate, info.channels, frames, info.format)


def header_info(source: AudioSource, name: str | None = None) -> AudioInfo:
    """What a clip's header says (rate, channels, frames; frames 0 when it does not say), without decoding it.

    Raises what `load_audio` would raise before decoding (an unsupported rate or channel count, a cut-off file)."""
    where = describe_source(source, name)
    with _open(source, where) as f:
        return _checked_info(f, where, None)
