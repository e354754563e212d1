"""The bad-input corpus (issue 13): each entry makes one hostile file, and every door that reads audio must give its
exact outcome: `audioclf predict` (a per-file error, exit 1, never NaN), `data inspect` (skipped and listed; fatal
with --strict), `train` (skipped and listed in metrics.json; fatal with --strict) and the service (its HTTP status
and error code). Never a traceback.

Entries are files on disk; the service gets their bytes (the file-system cases, links and pipes and odd names, have
no upload form). `reason` is what every file door says after the path; None means the file is good audio that every
door accepts, which documents the limits of what is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from audioclf.audio import MAX_CHANNELS, MAX_INPUT_SAMPLES_PER_SECOND, MAX_SAMPLING_RATE, MIN_SAMPLING_RATE
from audioclf.cli import app
from audioclf.data import NOT_UTF8_FILE_NAME
from audioclf.errors import shown_path
from audioclf.infer import load_classifier
from audioclf.serve import ServeSettings, create_app
from audioclf.testing import make_folder_dataset, noise, save_tone_model, tone, write_clip

runner = CliRunner()
RATE = 16_000
UNSUPPORTED_HINT = (f" (send WAV, FLAC, OGG or MP3 at {MIN_SAMPLING_RATE}-{MAX_SAMPLING_RATE} Hz with at most "
                    f"{MAX_CHANNELS} channels)")


# --- the hostile files ---------------------------------------------------------------------------------------------


def _wav(folder: Path, name: str, samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> str:
    return str(write_clip(folder / name, samples, rate, subtype=subtype))


def empty(folder):
    (folder / "empty.wav").write_bytes(b"")
    return str(folder / "empty.wav")


def text_as_wav(folder):
    (folder / "notes.wav").write_text("these are meeting notes, not audio\n" * 20)
    return str(folder / "notes.wav")


def truncated_wav(folder):
    path = Path(_wav(folder, "cut.wav", tone(440.0, 0.5, 8000), 8000))  # 8,000 bytes of samples after 44 of header
    path.write_bytes(path.read_bytes()[: 44 + 2000])
    return str(path)


def nan_float_wav(folder):
    samples = tone(440.0, 0.5, RATE)
    samples[100:200] = np.nan
    return _wav(folder, "nan.wav", samples, subtype="FLOAT")


def absurd_float_wav(folder):
    samples = tone(440.0, 0.5, RATE)
    samples[10] = 1e30  # finite, and a power spectrum of it is not
    return _wav(folder, "absurd.wav", samples, subtype="FLOAT")


def loud_float_wav(folder):
    return _wav(folder, "loud.wav", 10 * tone(440.0, 0.5, RATE), subtype="FLOAT")  # +20 dBFS: kept as it is


def _ogg(folder) -> bytes:
    return Path(write_clip(folder / "whole.ogg", noise(3.0, RATE, seed=1), RATE)).read_bytes()


def ogg_cut_mid_stream(folder):
    data = _ogg(folder)
    os.remove(folder / "whole.ogg")
    (folder / "cut.ogg").write_bytes(data[: len(data) // 2])  # decodes to 1 s of 3, without this check
    return str(folder / "cut.ogg")


def ogg_cut_in_headers(folder):
    data = _ogg(folder)
    os.remove(folder / "whole.ogg")
    (folder / "stub.ogg").write_bytes(data[:1000])
    return str(folder / "stub.ogg")


def flac_unknown_length(folder):
    """One second of FLAC whose STREAMINFO leaves the total samples 0: "unknown", as streaming encoders write it."""
    path = Path(write_clip(folder / "stream.flac", noise(1.0, RATE, seed=2), RATE, subtype="PCM_16"))
    data = bytearray(path.read_bytes())
    data[18:26] = (int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return str(path)


def bomb(folder):
    """A 335 KB silent FLAC declaring 60 s at 655,350 Hz in 8 channels: 1.26 GB of float32 if decoded at once."""
    path = folder / "bomb.flac"
    with sf.SoundFile(str(path), "w", 655_350, 8, format="FLAC", subtype="PCM_16") as f:
        second = np.zeros((655_350, 8), np.int16)
        for _ in range(60):
            f.write(second)
    return str(path)


def too_many_channels(folder):
    return _wav(folder, "many.wav", np.zeros((800, MAX_CHANNELS + 1), np.float32), 8000)


def absurd_rate(folder):
    return _wav(folder, "slow.wav", tone(20.0, 1.0, 100), 100)


def symlink_loop(folder):
    (folder / "loop.wav").symlink_to(folder / "loop.wav")
    return str(folder / "loop.wav")


def broken_symlink(folder):
    (folder / "moved.wav").symlink_to(folder / "elsewhere" / "clip.wav")
    return str(folder / "moved.wav")


def named_pipe(folder):
    os.mkfifo(folder / "pipe.wav")
    return str(folder / "pipe.wav")


def non_utf8_name(folder):
    """Good audio under a name that is not UTF-8, as os.listdir gives it (surrogate escapes)."""
    path = _wav(folder, "tmp.wav", tone(440.0, 0.5, RATE))
    odd = os.fsdecode(os.fsencode(folder) + b"/bad\xffname.wav")
    os.rename(path, odd)
    return odd


@dataclasses.dataclass(frozen=True)
class Hostile:
    make: Callable[[Path], str]
    reason: str | None  # what predict, data inspect and train say after the path; None: accepted
    status: int | None = None  # the service's answer to the bytes (None: not an upload)
    code: str | None = None
    serve_settings: dict = dataclasses.field(default_factory=dict)
    message_suffix: str = ""  # what the service adds to the reason
    file_doors: bool = True  # predict, data inspect and train (the bomb is only the service's)
    dataset_reason: str | None = None  # what data inspect and train say, where it differs from predict


CORPUS = {
    "empty": Hostile(empty, "empty file (0 bytes)", 422, "invalid_audio"),
    "text-as-wav": Hostile(text_as_wav, "not a readable audio file (Format not recognised.)", 415,
                           "unsupported_audio", message_suffix=UNSUPPORTED_HINT),
    "truncated-wav": Hostile(truncated_wav, "truncated or corrupt audio (data chunk is 6000 bytes shorter than its "
                                            "header says)", 422, "invalid_audio"),
    "nan-float-wav": Hostile(nan_float_wav, "non-finite samples (NaN or infinity)", 422, "invalid_audio"),
    "absurd-float-wav": Hostile(absurd_float_wav, "absurd sample values (peak 1e+30; audio lies within [-1, 1], and "
                                                  "a peak above 1000 is refused)", 422, "invalid_audio"),
    "loud-float-wav": Hostile(loud_float_wav, None, 200),
    "ogg-cut-mid-stream": Hostile(ogg_cut_mid_stream, "truncated or corrupt audio (the Ogg stream ends without its "
                                                      "end-of-stream page)", 422, "invalid_audio"),
    "ogg-cut-in-headers": Hostile(ogg_cut_in_headers, "truncated or corrupt audio (Supported file format but file is "
                                                      "malformed.)", 422, "invalid_audio"),
    "flac-unknown-length": Hostile(flac_unknown_length, None, 200),
    "flac-unknown-length-over-the-limit": Hostile(
        flac_unknown_length, None, 413, "audio_too_long", serve_settings={"max_audio_seconds": 0.5}),
    "bomb": Hostile(bomb, None, 413, "audio_too_large", file_doors=False),
    "too-many-channels": Hostile(too_many_channels, f"{MAX_CHANNELS + 1} channels (at most {MAX_CHANNELS} are "
                                                    f"supported)", 415, "unsupported_audio",
                                 message_suffix=UNSUPPORTED_HINT),
    "absurd-rate": Hostile(absurd_rate, f"absurd sampling rate 100 Hz (expected {MIN_SAMPLING_RATE}-"
                                        f"{MAX_SAMPLING_RATE} Hz)", 415, "unsupported_audio",
                           message_suffix=UNSUPPORTED_HINT),
    "symlink-loop": Hostile(symlink_loop, "symbolic link loop (too many levels of symbolic links)"),
    "broken-symlink": Hostile(broken_symlink, "broken symbolic link (what it points to does not exist)"),
    "named-pipe": Hostile(named_pipe, "not a regular file (a named pipe, socket or device)"),
    "non-utf8-name": Hostile(non_utf8_name, None, dataset_reason=NOT_UTF8_FILE_NAME),
}
SERVICE_MESSAGES = {  # where the service's message is its own, not "<name>: <reason>"
    "flac-unknown-length-over-the-limit": "clip: the audio is longer than 0.5 s (its header does not say); this "
                                          "server accepts at most 0.5 s (--max-audio-seconds)",
    "bomb": "clip: too many samples to decode: 8 channels x 39,321,000 frames (60.0 s at 655350 Hz) is 314,568,000; "
            f"600 s of audio may decode at most {600 * MAX_INPUT_SAMPLES_PER_SECOND:,} (384,000 a second, such as "
            "192 kHz stereo or 48 kHz 7.1) (the budget follows --max-audio-seconds)",
}
FILE_DOORS = [name for name, entry in CORPUS.items() if entry.file_doors and "over-the-limit" not in name]
UPLOADS = [name for name, entry in CORPUS.items() if entry.status is not None]


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tone_model(tmp_path_factory.mktemp("model") / "tones")


def _labelled_folder(root: Path) -> Path:
    """Two labels of three good clips each, to which a test adds hostile files under low/."""
    return make_folder_dataset(root, labels=("low", "high"), clips_per_label=3, seconds=0.5, sampling_rate=8000)


def _dataset_path(path: str) -> str:
    """How a clip of a label folder is named in problems: its absolute path, the folder's links resolved."""
    return shown_path(os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)))


def _strict_json(text: str):
    """JSON as the standard has it: NaN and Infinity, which Python's json writes and reads, are refused."""
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON output: {text}")

    return json.loads(text, parse_constant=refuse)


def _one_line_error(result, *, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()  # progress bars may come first
    assert [line for line in lines if line.startswith("error")] == lines[-1:], result.stderr
    return lines[-1]


# --- predict -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILE_DOORS)
def test_predict(name, model_dir, tmp_path):
    entry = CORPUS[name]
    path = entry.make(tmp_path)

    result = runner.invoke(app, ["predict", str(model_dir), path, "--json"])

    assert "Traceback" not in result.output
    (line,) = result.stdout.splitlines()
    row = _strict_json(line)
    assert row["path"] == shown_path(path)
    if entry.reason is None:
        assert result.exit_code == 0, result.output
        assert [p["label"] for p in row["predictions"]] and all(np.isfinite(p["score"]) for p in row["predictions"])
    else:
        assert result.exit_code == 1  # nothing could be classified
        assert row == {"path": shown_path(path), "error": entry.reason}


# --- data inspect --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILE_DOORS)
def test_data_inspect(name, tmp_path):
    entry = CORPUS[name]
    folder = _labelled_folder(tmp_path / "data")
    path = entry.make(folder / "low")
    reason = entry.dataset_reason or entry.reason

    result = runner.invoke(app, ["data", "inspect", str(folder), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    if reason is None:
        assert report["problems"] == [] and report["labels"] == {"high": 3, "low": 4}
    else:
        assert report["problems"] == [{"path": _dataset_path(path), "reason": reason}]
        assert report["labels"] == {"high": 3, "low": 3}
        strict = runner.invoke(app, ["data", "inspect", str(folder), "--strict"])
        assert _one_line_error(strict) == f"error: {_dataset_path(path)}: {reason}"


# --- train ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in FILE_DOORS if (CORPUS[n].dataset_reason or CORPUS[n].reason)])
def test_train_with_strict_stops_at_the_bad_clip(name, model_dir, tmp_path):
    entry = CORPUS[name]
    folder = _labelled_folder(tmp_path / "data")
    path = entry.make(folder / "low")

    result = runner.invoke(app, ["train", "--data", str(folder), "--model-config", "tiny-wav2vec2", "--output",
                                 str(tmp_path / "model"), "--strict", "-q"])

    assert _one_line_error(result) == f"error: {_dataset_path(path)}: {entry.dataset_reason or entry.reason}"
    assert not (tmp_path / "model").exists()


def test_train_skips_and_lists_every_bad_clip_and_learns_finite_weights(tmp_path):
    from safetensors.numpy import load_file

    folder = _labelled_folder(tmp_path / "data")
    expected = []
    for name in FILE_DOORS:
        entry = CORPUS[name]
        subfolder = folder / "low" / name  # one folder each: several makers use the same file names
        subfolder.mkdir()
        path = entry.make(subfolder)
        if entry.dataset_reason or entry.reason:
            expected.append({"path": _dataset_path(path), "reason": entry.dataset_reason or entry.reason})
    output = tmp_path / "model"

    result = runner.invoke(app, ["train", "--data", str(folder), "--model-config", "tiny-wav2vec2", "--output",
                                 str(output), "--epochs", "1", "--batch-size", "4", "--threads", "1", "-q"])

    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert sorted(metrics["problems"], key=lambda p: p["path"]) == sorted(expected, key=lambda p: p["path"])
    weights = load_file(str(output / "model.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())  # the loud float clip was trained on, harmlessly
    assert all(np.isfinite(v) for v in (metrics["test"]["loss"], metrics["test"]["accuracy"]))


# --- the service ---------------------------------------------------------------------------------------------------


@contextmanager
def _service(classifier, **settings):
    with TestClient(create_app(classifier, ServeSettings(**settings))) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.02)
        yield client


@pytest.fixture(scope="module")
def classifier(model_dir):
    return load_classifier(model_dir)


@pytest.fixture(scope="module")
def service(classifier):
    with _service(classifier) as client:
        yield client


@pytest.mark.parametrize("name", UPLOADS)
def test_service(name, classifier, service, tmp_path):
    entry = CORPUS[name]
    data = Path(entry.make(tmp_path)).read_bytes()

    if entry.serve_settings:
        with _service(classifier, **entry.serve_settings) as client:
            response = client.post("/v1/classify", files={"file": ("clip", data, "application/octet-stream")})
    else:
        response = service.post("/v1/classify", files={"file": ("clip", data, "application/octet-stream")})

    assert response.status_code == entry.status, response.text
    assert "Traceback" not in response.text
    body = _strict_json(response.text)
    if entry.status == 200:
        assert all(np.isfinite(p["score"]) for p in body["predictions"])
        return
    assert body["error"]["code"] == entry.code
    want = SERVICE_MESSAGES.get(name) or f"clip: {entry.reason}{entry.message_suffix}"
    assert body["error"]["message"] == want
    assert service.get("/healthz").status_code == 200  # and the server goes on


def test_the_bomb_decodes_in_bounded_memory_where_no_limit_applies(tmp_path):
    """Without a length limit (the CLI's doors) the bomb is only a silent 60 s recording: decoded a block at a time,
    its peak memory is about its 16 kHz output (3.8 MB), not the 1.26 GB its frames hold."""
    import subprocess
    import sys

    path = bomb(tmp_path)
    script = ("import resource, sys; from audioclf.audio import load_audio, read_audio; "
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
              "samples = load_audio(sys.argv[1], 16000); "
              "print(len(samples), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, env=env, check=True)
    n_samples, growth_mb = map(int, out.stdout.split())
    assert n_samples == 60 * 16_000
    assert growth_mb < 100  # it was 1,500 MB when the whole file was read as (frames, channels) float


# --- the last guard: no NaN in any output --------------------------------------------------------------------------


def test_a_model_that_gives_nan_is_a_per_file_error_not_nan_json(model_dir, tmp_path):
    from safetensors.numpy import load_file, save_file
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    head = next(name for name in weights if name.endswith("classifier.bias"))
    weights[head] = np.full_like(weights[head], np.nan)
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    path = _wav(tmp_path, "fine.wav", tone(440.0, 0.5, RATE))

    result = runner.invoke(app, ["predict", str(broken), path, "--json"])

    assert result.exit_code == 1
    assert _strict_json(result.stdout) == {
        "path": path, "error": "the model gave non-finite scores (NaN or infinity); its weights or its input are broken"}


# --- file names that are not UTF-8, through every door that takes paths ---------------------------------------------


def test_a_file_name_that_is_not_utf8_goes_through_every_predict_door(model_dir, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    odd = non_utf8_name(folder)
    shown = shown_path(odd)
    assert shown.endswith("/bad\\xffname.wav")
    raw = os.fsencode(odd)
    (tmp_path / "list.csv").write_bytes(b"path\n" + raw + b"\n")  # the bytes as they are on disk
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": odd}) + "\n")  # "\udcff", as json.dumps writes it

    printed = runner.invoke(app, ["predict", str(model_dir), odd])
    from_folder = runner.invoke(app, ["predict", str(model_dir), str(folder)])
    from_stdin = runner.invoke(app, ["predict", str(model_dir), "-"], input=raw + b"\n")
    for result in (printed, from_folder, from_stdin):
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"{shown}: ")

    for given in (str(folder / "*.wav"), str(tmp_path / "list.csv"), str(tmp_path / "list.jsonl")):
        out = tmp_path / f"out-{Path(given).suffix}"
        result = runner.invoke(app, ["predict", str(model_dir), "--input", given, "--output", str(out), "--format",
                                     "jsonl", "-q"])
        assert result.exit_code == 0, result.output
        (row,) = [json.loads(line) for line in (out / "part-00000.jsonl").read_text().splitlines()]
        assert row["path"] == shown and row["error"] is None and len(row["labels"]) == 3

    missing = odd + ".gone"
    result = runner.invoke(app, ["predict", str(model_dir), missing])
    assert _one_line_error(result) == f"error: {shown}.gone: file not found"


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_manifest_row_that_is_not_utf8_is_skipped_and_listed(tmp_path, kind):
    folder = _labelled_folder(tmp_path / "data")
    odd = non_utf8_name(folder / "low")
    rows = [(str(p.relative_to(folder)), p.parent.name) for p in sorted(folder.rglob("g*.wav"))]
    manifest = folder / f"manifest.{kind}"
    if kind == "csv":
        manifest.write_bytes(b"path,label\n" + b"".join(f"{p},{label}\n".encode() for p, label in rows)
                             + os.fsencode(odd) + b",low\n")
    else:
        manifest.write_text("".join(json.dumps({"path": p, "label": label, "note": "ok"}) + "\n" for p, label in rows)
                            + json.dumps({"path": odd, "label": "low", "note": "caf\udce9"}) + "\n")

    result = runner.invoke(app, ["data", "inspect", str(manifest), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == [{"path": _dataset_path(odd), "reason": NOT_UTF8_FILE_NAME}]
    assert report["labels"] == {"high": 3, "low": 3}
    strict = runner.invoke(app, ["data", "inspect", str(manifest), "--strict"])
    assert _one_line_error(strict) == f"error: {_dataset_path(odd)}: {NOT_UTF8_FILE_NAME}"
