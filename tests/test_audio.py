"""audio.py: every format decodes to the numbers that were written, and every bad file fails with its path and a reason."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import soundfile as sf
import soxr

from audioclf.audio import (MAX_CHANNELS, MAX_INPUT_SAMPLES_PER_SECOND, MAX_SAMPLE_PEAK, MAX_SAMPLING_RATE,
                            STREAM_BLOCK_FRAMES, describe_source, header_info, inspect_audio, load_audio, read_audio,
                            stream_audio, to_mono)
from audioclf.errors import AudioLoadError, AudioTooLargeError, AudioTooLongError, UnsupportedAudioError
from audioclf.testing import noise, tone, write_clip

SAMPLING_RATE = 16_000
HAS_MP3 = "MP3" in sf.available_formats()

# (format, subtype, suffix, bits): lossless encodings and the integer width they quantise to (None: float)
LOSSLESS = [
    ("WAV", "PCM_U8", ".wav", 8),
    ("WAV", "PCM_16", ".wav", 16),
    ("WAV", "PCM_24", ".wav", 24),
    ("WAV", "PCM_32", ".wav", 32),
    ("WAV", "FLOAT", ".wav", None),
    ("WAV", "DOUBLE", ".wav", None),
    ("FLAC", "PCM_16", ".flac", 16),
    ("FLAC", "PCM_24", ".flac", 24),
]
LOSSY = [
    ("OGG", "VORBIS", ".ogg"),
    pytest.param("MP3", "MPEG_LAYER_III", ".mp3", marks=pytest.mark.skipif(not HAS_MP3, reason="libsndfile without MP3")),
]


def _integer_clip(bits: int, frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random integer samples at `bits` resolution: (what to hand soundfile, the float32 they must decode to).

    libsndfile maps an int16/int32 array onto a narrower subtype by keeping its top bits, and decodes an n-bit sample
    k to k / 2**(n-1), so writing integers makes the expected floats exact.
    """
    rng = np.random.default_rng(seed)
    levels = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), frames, dtype=np.int64)
    container_bits = 16 if bits <= 16 else 32
    written = (levels << (container_bits - bits)).astype(np.int16 if container_bits == 16 else np.int32)
    return written, (levels / 2 ** (bits - 1)).astype(np.float32)


@pytest.mark.parametrize("fmt, subtype, suffix, bits", LOSSLESS)
def test_lossless_formats_decode_exactly(tmp_path, fmt, subtype, suffix, bits):
    if bits is None:
        expected = noise(0.25, SAMPLING_RATE, amplitude=0.9, seed=3)
        written = expected.astype(np.float64) if subtype == "DOUBLE" else expected
    else:
        written, expected = _integer_clip(bits, SAMPLING_RATE // 4)
    path = write_clip(tmp_path / f"clip{suffix}", written, SAMPLING_RATE, subtype=subtype, format=fmt)

    samples, info = read_audio(path)

    assert samples.dtype == np.float32 and samples.shape == (len(expected), 1)
    assert (info.sampling_rate, info.channels, info.frames, info.format) == (SAMPLING_RATE, 1, len(expected), fmt)
    # 32-bit integers have more precision than float32 holds, so allow float32's own rounding there
    np.testing.assert_allclose(samples[:, 0], expected, rtol=0, atol=2.0**-24 if bits == 32 else 0)


@pytest.mark.parametrize("fmt, subtype, suffix, bits", LOSSLESS)
def test_lossless_formats_keep_a_float_clip_within_one_quantisation_step(tmp_path, fmt, subtype, suffix, bits):
    clip = tone(440.0, 0.25, SAMPLING_RATE, amplitude=0.5)
    path = write_clip(tmp_path / f"clip{suffix}", clip, SAMPLING_RATE, subtype=subtype, format=fmt)

    samples = load_audio(path, SAMPLING_RATE)

    step = 0.0 if bits is None else 2.0 / 2**bits  # full scale [-1, 1) split into 2**bits levels
    assert samples.dtype == np.float32 and samples.shape == clip.shape
    assert np.abs(samples - clip).max() <= step


@pytest.mark.parametrize("fmt, subtype, suffix", LOSSY)
def test_lossy_formats_decode_close_to_the_original(tmp_path, fmt, subtype, suffix):
    clip = tone(440.0, 1.0, SAMPLING_RATE, amplitude=0.5)
    path = write_clip(tmp_path / f"clip{suffix}", clip, SAMPLING_RATE, subtype=subtype, format=fmt)

    samples = load_audio(path, SAMPLING_RATE)

    assert samples.dtype == np.float32 and samples.shape == clip.shape
    assert np.corrcoef(samples, clip)[0, 1] > 0.999
    assert np.abs(samples - clip).max() < 0.05


@pytest.mark.parametrize(
    "fmt, subtype, suffix",
    [(f, s, x) for f, s, x, _ in LOSSLESS] + LOSSY,
)
def test_bytes_decode_the_same_as_the_path(tmp_path, fmt, subtype, suffix):
    clip = tone(440.0, 0.5, 8000, amplitude=0.5)
    path = write_clip(tmp_path / f"clip{suffix}", clip, 8000, subtype=subtype, format=fmt)
    data = path.read_bytes()

    from_path = load_audio(path, SAMPLING_RATE)

    for source in (data, bytearray(data), memoryview(data), str(path)):
        np.testing.assert_array_equal(load_audio(source, SAMPLING_RATE), from_path)


def test_resampling_is_soxr_high_quality(tmp_path):
    clip = noise(0.5, 8000, seed=1) + tone(300.0, 0.5, 8000, amplitude=0.2)
    path = write_clip(tmp_path / "clip.wav", clip, 8000, subtype="FLOAT")

    samples = load_audio(path, 16_000)

    expected = soxr.resample(clip, 8000, 16_000, quality="HQ")
    assert samples.dtype == np.float32 and samples.shape == (8000,)
    np.testing.assert_array_equal(samples, expected)


def test_no_resampling_at_the_file_rate(tmp_path):
    clip = noise(0.5, 8000, seed=2)
    path = write_clip(tmp_path / "clip.wav", clip, 8000, subtype="FLOAT")

    np.testing.assert_array_equal(load_audio(path, 8000), clip)


def test_stereo_is_the_average_of_its_channels(tmp_path):
    left = tone(220.0, 0.5, 8000, amplitude=0.6)
    right = noise(0.5, 8000, amplitude=0.3, seed=4)
    path = write_clip(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")

    samples, info = read_audio(path)
    mono = load_audio(path, 8000)

    assert info.channels == 2 and samples.shape == (4000, 2)
    np.testing.assert_array_equal(mono, (left + right) / np.float32(2))
    np.testing.assert_array_equal(to_mono(samples), mono)


def test_three_channels_average_too(tmp_path):
    channels = np.stack([noise(0.25, 8000, seed=s) for s in range(3)], axis=1)
    path = write_clip(tmp_path / "three.flac", channels, 8000, subtype="PCM_24")

    np.testing.assert_allclose(load_audio(path, 8000), channels.mean(axis=1), atol=2.0**-22)


def test_inspect_reports_what_was_decoded(tmp_path):
    path = write_clip(tmp_path / "clip.flac", np.zeros((12_000, 2), np.float32), 48_000, subtype="PCM_16")

    info = inspect_audio(path)

    assert (info.sampling_rate, info.channels, info.frames, info.format) == (48_000, 2, 12_000, "FLAC")
    assert info.duration_seconds == 0.25


# --- files that are not usable audio -------------------------------------------------------------------------------


def _valid_wav(tmp_path, name="clip.wav", subtype="PCM_16", sampling_rate=SAMPLING_RATE):
    return write_clip(tmp_path / name, tone(440.0, 0.5, sampling_rate), sampling_rate, subtype=subtype)


def _assert_fails(source, path_text: str, reason: str) -> AudioLoadError:
    with pytest.raises(AudioLoadError) as caught:
        load_audio(source, SAMPLING_RATE)
    error = caught.value
    assert error.source == path_text
    assert path_text in str(error)
    assert reason in error.reason, error.reason
    return error


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    _assert_fails(path, str(path), "file not found")


def test_directory(tmp_path):
    path = tmp_path / "folder.wav"
    path.mkdir()
    _assert_fails(path, str(path), "is a directory")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _assert_fails(path, str(path), "empty file (0 bytes)")
    _assert_fails(b"", "<0 bytes>", "empty file (0 bytes)")


def test_wav_with_a_header_and_no_frames(tmp_path):
    path = write_clip(tmp_path / "silent.wav", np.zeros(0, np.float32), SAMPLING_RATE, subtype="PCM_16")
    assert path.stat().st_size == 44  # a complete header promising a 0-byte data chunk
    _assert_fails(path, str(path), "empty audio (0 samples)")


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes, not audio\n" * 20)
    _assert_fails(path, str(path), "not a readable audio file")


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.999])
def test_truncated_wav(tmp_path, subtype, keep):
    # libsndfile shortens a cut-off WAV to what is there without complaint; audio.py must notice the header's promise
    data = _valid_wav(tmp_path, subtype=subtype).read_bytes()
    samples_start = data.index(b"data") + 8  # after the chunk id and its size
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: samples_start + int(keep * (len(data) - samples_start))])

    error = _assert_fails(cut, str(cut), "truncated or corrupt")
    assert "header says" in error.reason
    _assert_fails(cut.read_bytes(), f"<{cut.stat().st_size} bytes>", "truncated or corrupt")


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_flac(tmp_path, subtype, keep):
    data = write_clip(tmp_path / "clip.flac", noise(0.5, SAMPLING_RATE, seed=5), SAMPLING_RATE, subtype=subtype).read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: int(keep * len(data))])

    _assert_fails(cut, str(cut), "truncated or corrupt")


def test_truncated_ogg(tmp_path):
    data = write_clip(tmp_path / "clip.ogg", tone(440.0, 1.0, SAMPLING_RATE), SAMPLING_RATE).read_bytes()
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(data[:-10])  # loses the end-of-stream page

    _assert_fails(cut, str(cut), "truncated or corrupt")


@pytest.mark.skipif(not HAS_MP3, reason="libsndfile without MP3")
def test_truncated_mp3(tmp_path):
    data = write_clip(tmp_path / "clip.mp3", tone(440.0, 1.0, SAMPLING_RATE), SAMPLING_RATE).read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])

    _assert_fails(cut, str(cut), "truncated or corrupt")


def test_streaming_wav_with_unknown_length_still_loads(tmp_path):
    # ffmpeg writing to a pipe leaves 0xFFFFFFFF in the RIFF and data sizes; that is not truncation
    path = _valid_wav(tmp_path)
    data = bytearray(path.read_bytes())
    assert data[36:40] == b"data"
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(data))

    np.testing.assert_array_equal(load_audio(streamed, SAMPLING_RATE), load_audio(path, SAMPLING_RATE))


def test_odd_length_data_chunk_with_pad_byte_loads(tmp_path):
    path = write_clip(tmp_path / "odd.wav", tone(440.0, 0.5, SAMPLING_RATE)[:7999], SAMPLING_RATE, subtype="PCM_U8")
    assert read_audio(path)[1].frames == 7999


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    clip = tone(440.0, 0.5, SAMPLING_RATE)
    clip[100] = bad
    path = write_clip(tmp_path / "bad.wav", clip, SAMPLING_RATE, subtype="FLOAT")
    _assert_fails(path, str(path), "non-finite samples")


def test_sampling_rate_too_low(tmp_path):
    path = _valid_wav(tmp_path, sampling_rate=100)
    error = _assert_fails(path, str(path), "absurd sampling rate 100 Hz")
    assert f"{MAX_SAMPLING_RATE}" in error.reason  # says what would be valid


def test_sampling_rate_too_high(tmp_path):
    path = _valid_wav(tmp_path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"fmt "
    data[24:28] = struct.pack("<I", 10_000_000)  # sample rate
    data[28:32] = struct.pack("<I", 20_000_000)  # byte rate, kept consistent so only the rate is absurd
    path.write_bytes(bytes(data))
    _assert_fails(path, str(path), "absurd sampling rate 10000000 Hz")


def test_bytes_are_named_by_the_given_name(tmp_path):
    with pytest.raises(AudioLoadError, match=r"^upload\.wav: not a readable audio file"):
        load_audio(b"not audio at all" * 10, SAMPLING_RATE, name="upload.wav")


# --- hostile files (issue 13): bombs, unknown lengths, cut-off streams, absurd values ------------------------------


def _unknown_length_flac(tmp_path, seconds=1.0, sampling_rate=SAMPLING_RATE):
    """A FLAC whose STREAMINFO total-samples field is 0 ("unknown"), as streaming encoders leave it."""
    path = write_clip(tmp_path / "known.flac", noise(seconds, sampling_rate, seed=7), sampling_rate, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    # "fLaC", a 4-byte block header, then STREAMINFO: 10 bytes of block/frame sizes, then 64 bits of
    # rate (20), channels - 1 (3), bits - 1 (5) and total samples (36)
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = packed.to_bytes(8, "big")
    unknown = tmp_path / "unknown.flac"
    unknown.write_bytes(bytes(data))
    return path, unknown


def test_a_flac_of_unknown_length_is_decoded_and_measured(tmp_path):
    known, unknown = _unknown_length_flac(tmp_path)
    assert sf.info(str(unknown)).frames == 2**63 - 1  # libsndfile's "unknown"

    assert header_info(unknown).frames == 0
    np.testing.assert_array_equal(load_audio(unknown, 8000), load_audio(known, 8000))
    assert inspect_audio(unknown).frames == SAMPLING_RATE
    assert load_audio(unknown, SAMPLING_RATE, max_seconds=1.0).shape == (SAMPLING_RATE,)
    with pytest.raises(AudioTooLongError) as caught:
        load_audio(unknown, SAMPLING_RATE, max_seconds=0.5)
    assert not caught.value.known and "longer than 0.5 s" in caught.value.reason


def test_the_whole_clip_path_is_the_block_loop(tmp_path):
    channels = np.stack([noise(3.0, 44_100, seed=s) for s in range(2)], axis=1)
    path = write_clip(tmp_path / "long.wav", channels, 44_100, subtype="FLOAT")

    samples, info = read_audio(path)

    np.testing.assert_array_equal(samples, channels)
    assert info.frames == len(channels) > STREAM_BLOCK_FRAMES
    np.testing.assert_array_equal(load_audio(path, 16_000), np.concatenate(list(stream_audio(path, 16_000))))
    np.testing.assert_array_equal(load_audio(path, 16_000),
                                  soxr.resample(channels.mean(axis=1), 44_100, 16_000, quality="HQ"))


def _bomb(tmp_path, seconds=2.0, sampling_rate=655_350, channels=8):
    """Silence at a high rate in many channels: a small FLAC that decodes to seconds x rate x channels floats."""
    path = tmp_path / "bomb.flac"
    with sf.SoundFile(str(path), "w", sampling_rate, channels, format="FLAC", subtype="PCM_16") as f:
        f.write(np.zeros((int(seconds * sampling_rate), channels), np.float32))
    return path


def test_a_decompression_bomb_is_refused_from_its_header_by_the_sample_budget(tmp_path):
    path = _bomb(tmp_path)  # 10,485,600 samples in about 12 KB
    assert path.stat().st_size < 20_000

    with pytest.raises(AudioTooLargeError) as caught:
        load_audio(path, SAMPLING_RATE, max_seconds=10)  # 2 s is within 10 s, but not 10,485,600 samples
    assert caught.value.reason == (
        "too many samples to decode: 8 channels x 1,310,700 frames (2.0 s at 655350 Hz) is 10,485,600; 10 s of audio "
        f"may decode at most {10 * MAX_INPUT_SAMPLES_PER_SECOND:,} (384,000 a second, such as 192 kHz stereo or 48 kHz 7.1)")
    # without a limit the same file decodes, a block at a time, to 2 s of mono
    assert load_audio(path, SAMPLING_RATE).shape == (2 * SAMPLING_RATE,)


def test_audio_over_max_seconds_is_refused_from_its_header(tmp_path):
    path = _valid_wav(tmp_path)  # 0.5 s
    assert load_audio(path, SAMPLING_RATE, max_seconds=0.5).shape == (8000,)
    with pytest.raises(AudioTooLongError, match=r"the audio is 0\.5 s long; at most 0\.4 s is accepted") as caught:
        load_audio(path, SAMPLING_RATE, max_seconds=0.4)
    assert caught.value.known and caught.value.seconds == 0.5


def test_too_many_channels(tmp_path):
    path = write_clip(tmp_path / "many.wav", np.zeros((100, MAX_CHANNELS + 1), np.float32), 8000, subtype="PCM_16")
    with pytest.raises(UnsupportedAudioError, match=rf"{MAX_CHANNELS + 1} channels \(at most {MAX_CHANNELS}"):
        load_audio(path, 8000)
    write_clip(tmp_path / "ok.wav", np.zeros((100, MAX_CHANNELS), np.float32), 8000, subtype="PCM_16")
    assert load_audio(tmp_path / "ok.wav", 8000).shape == (100,)


@pytest.mark.parametrize("peak, refused", [(MAX_SAMPLE_PEAK, False), (MAX_SAMPLE_PEAK * 1.01, True), (1e30, True)])
def test_absurd_sample_values_are_refused_and_loud_float_files_kept(tmp_path, peak, refused):
    clip = tone(440.0, 0.5, SAMPLING_RATE, amplitude=1.0)
    clip[4000] = peak
    path = write_clip(tmp_path / "loud.wav", clip, SAMPLING_RATE, subtype="FLOAT")
    if refused:
        _assert_fails(path, str(path), f"absurd sample values (peak {peak:.3g}")
    else:  # kept as written: float files may go over full scale, and the pipeline would not scale them either
        np.testing.assert_array_equal(load_audio(path, SAMPLING_RATE), clip)


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.999])
def test_an_ogg_cut_off_mid_stream_is_truncated_not_shorter(tmp_path, keep):
    # libsndfile decodes what pages there are without an error; only its log says the stream has no end
    data = write_clip(tmp_path / "clip.ogg", noise(3.0, SAMPLING_RATE, seed=8), SAMPLING_RATE).read_bytes()
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(data[: int(keep * len(data))])

    error = _assert_fails(cut, str(cut), "truncated or corrupt audio (the Ogg stream ends without its end-of-stream page)")
    assert "empty" not in error.reason
    with pytest.raises(AudioLoadError, match="end-of-stream page"):
        list(stream_audio(cut, SAMPLING_RATE))


def test_an_ogg_cut_inside_its_headers_is_truncated(tmp_path):
    data = write_clip(tmp_path / "clip.ogg", noise(1.0, SAMPLING_RATE, seed=8), SAMPLING_RATE).read_bytes()
    _assert_fails(data[:1000], "<1000 bytes>", "truncated or corrupt audio (Supported file format but file is malformed.)")


def test_symbolic_links_that_lead_nowhere_say_so(tmp_path):
    loop = tmp_path / "loop.wav"
    loop.symlink_to(tmp_path / "other.wav")
    (tmp_path / "other.wav").symlink_to(loop)
    broken = tmp_path / "broken.wav"
    broken.symlink_to(tmp_path / "gone.wav")

    _assert_fails(loop, str(loop), "symbolic link loop")
    _assert_fails(broken, str(broken), "broken symbolic link")


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    _assert_fails(fifo, str(fifo), "not a regular file")


def test_a_file_name_that_is_not_utf8_is_read_and_shown_escaped(tmp_path):
    good = _valid_wav(tmp_path)
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xffname.wav")
    os.rename(good, odd)

    assert load_audio(odd, SAMPLING_RATE).shape == (8000,)
    assert describe_source(odd) == f"{tmp_path}/bad\\xffname.wav"
    with pytest.raises(AudioLoadError) as caught:
        load_audio(odd + ".missing", SAMPLING_RATE)
    assert str(caught.value) == f"{tmp_path}/bad\\xffname.wav.missing: file not found"
    str(caught.value).encode("utf-8")  # printable
