"""infer.py and the `predict` command: batched scores equal transformers' pipeline (arrays of mixed lengths, files at
8 and 16 kHz, batch sizes 1 and many), long recordings are streamed and windowed and their segments switch label
where the audio does, batches never pad models that must not be padded, and bad inputs are reported per file."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from audioclf.audio import load_audio, stream_audio
from audioclf.cli import app
from audioclf.errors import AudioLoadError, ConfigError
from audioclf.features import DEFAULT_WINDOW_SECONDS, stream_windows, window_spans
from audioclf.infer import load_classifier, plan_batches
from audioclf.testing import class_clip, save_tone_model, write_clip

runner = CliRunner()
LABELS = ["low", "high", "noise"]
RATE = 16_000  # Hz, the tiny models' rate
# mixed lengths in seconds, some repeated so that models without an attention mask get batches of more than one
PARITY_SECONDS = [0.5, 0.8, 0.8, 1.0, 0.63, 0.8, 1.0, 0.5, 0.91]


def tone_model(name: str, directory: Path) -> Path:
    return save_tone_model(directory, name, tuple(LABELS))


@pytest.fixture(scope="module", params=["tiny-wav2vec2", "tiny-wav2vec2-layernorm", "tiny-whisper"])
def model_dir(request, tmp_path_factory) -> Path:
    return tone_model(request.param, tmp_path_factory.mktemp(request.param) / "model")


@pytest.fixture(scope="module")
def wav2vec2_dir(tmp_path_factory) -> Path:
    return tone_model("tiny-wav2vec2", tmp_path_factory.mktemp("w2v") / "model")


def _assert_same(ours: list[dict], reference: list[dict], where: str = "") -> None:
    assert ours[0]["label"] == reference[0]["label"], where
    scores = {p["label"]: p["score"] for p in ours}
    assert set(scores) == set(LABELS)
    for p in reference:
        assert scores[p["label"]] == pytest.approx(p["score"], abs=1e-4), where


# --- parity with transformers' pipeline ---------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 8])
def test_arrays_of_mixed_lengths_match_the_pipeline(model_dir, batch_size):
    pipe = transformers.pipeline("audio-classification", model=str(model_dir), device="cpu")
    classifier = load_classifier(model_dir, batch_size=batch_size)
    clips = [class_clip(LABELS[i % 3], seconds, RATE, seed=100 + i) for i, seconds in enumerate(PARITY_SECONDS)]

    probabilities = np.stack([scores.probabilities for scores in classifier.score_clips(clips)])

    assert probabilities.shape == (len(clips), len(LABELS))
    top = set()
    for i, clip in enumerate(clips):
        reference = pipe({"raw": clip, "sampling_rate": RATE}, top_k=None)
        ours = [{"label": label, "score": float(p)} for label, p in zip(classifier.labels, probabilities[i])]
        _assert_same(sorted(ours, key=lambda p: -p["score"]), reference, f"clip {i}")
        _assert_same(classifier.classify(clip, top_k=None), reference, f"clip {i}")
        top.add(reference[0]["label"])
    assert top == set(LABELS)  # the model tells the tones apart, so agreeing on top-1 means something


@pytest.mark.parametrize("batch_size", [1, 8])
def test_files_at_8_and_16_khz_match_the_pipeline(model_dir, tmp_path, batch_size):
    """The pipeline needs ffmpeg for paths, so it is given the array our decoder makes of each file."""
    paths = []
    for i, seconds in enumerate(PARITY_SECONDS):
        rate = (8000, 16000)[i % 2]
        samples = class_clip(LABELS[i % 3], seconds, rate, seed=200 + i)
        paths.append(str(write_clip(tmp_path / f"clip{i}_{rate}.wav", samples, rate, subtype="FLOAT")))
    pipe = transformers.pipeline("audio-classification", model=str(model_dir), device="cpu")
    classifier = load_classifier(model_dir, batch_size=batch_size)

    outcomes = list(classifier.classify_files(paths, top_k=None))

    assert [o.source for o in outcomes] == paths
    for path, outcome in zip(paths, outcomes):
        assert outcome.error is None
        reference = pipe({"raw": load_audio(path, RATE), "sampling_rate": RATE}, top_k=None)
        _assert_same(outcome.predictions, reference, path)


# --- batching -----------------------------------------------------------------------------------


def test_plan_batches_never_pads_models_without_a_mask():
    lengths = [5, 3, 5, 5, 4, 3, 100, 5, 3, 3]

    unmasked = plan_batches(lengths, batch_size=3, equal_lengths_only=True, any_lengths=False)
    masked = plan_batches(lengths, batch_size=3, equal_lengths_only=False, any_lengths=False)
    fixed = plan_batches(lengths, batch_size=3, equal_lengths_only=False, any_lengths=True)

    for plan in (unmasked, masked, fixed):
        assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
        assert all(1 <= len(batch) <= 3 for batch in plan)
    assert all(len({lengths[i] for i in batch}) == 1 for batch in unmasked)
    assert [[lengths[i] for i in batch] for batch in unmasked] == [[3, 3, 3], [3], [4], [5, 5, 5], [5], [100]]
    assert all(max(lengths[i] for i in b) <= 1.25 * min(lengths[i] for i in b) for b in masked)
    assert len(fixed) == 4  # a fixed window pads every clip anyway: only the batch size limits


def test_threads_setting_reaches_torch(wav2vec2_dir):
    before = torch.get_num_threads()
    try:
        load_classifier(wav2vec2_dir, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --- long recordings ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples, window, hop", [(10, 4, 2), (11, 4, 3), (4, 4, 1), (3, 4, 2), (100, 7, 7)])
def test_windows_cover_the_recording_and_streaming_cuts_the_same_ones(n_samples, window, hop):
    samples = np.arange(n_samples, dtype=np.float32)
    spans = window_spans(n_samples, window, hop)
    blocks = np.array_split(samples, [2, 3, 9, 40])  # uneven blocks, some empty

    streamed = list(stream_windows(iter(blocks), window, hop))

    assert spans[0][0] == 0 and spans[-1][1] == n_samples
    assert all(b - a == min(window, n_samples) for a, b in spans)
    assert all(b[0] - a[0] <= hop for a, b in itertools.pairwise(spans))
    assert [start for start, _ in streamed] == [start for start, _ in spans]
    for (start, end), (_, window_samples) in zip(spans, streamed):
        np.testing.assert_array_equal(window_samples, samples[start:end])


@pytest.mark.parametrize("rate, channels", [(8000, 1), (44100, 2), (16000, 1)])
def test_streamed_decode_equals_load_audio(tmp_path, rate, channels):
    samples = np.stack([class_clip("low", 2.3, rate, seed=c) for c in range(channels)], axis=1)
    path = write_clip(tmp_path / "clip.flac", samples, rate)

    blocks = list(stream_audio(path, RATE, block_frames=5000))

    assert len(blocks) > 3 and all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path, RATE))


def test_segments_switch_label_where_the_recording_does(wav2vec2_dir, tmp_path):
    switch_seconds, hop_seconds, window_seconds = 4.3, 0.25, 1.0
    recording = np.concatenate([class_clip("low", switch_seconds, 8000, seed=5), class_clip("high", 3.7, 8000, seed=6)])
    path = write_clip(tmp_path / "long.wav", recording, 8000)
    classifier = load_classifier(wav2vec2_dir, window_seconds=window_seconds, hop_seconds=hop_seconds)

    (outcome,) = classifier.classify_files([str(path)], top_k=1, segments=True)

    segments = outcome.segments
    assert segments[0]["start_seconds"] == 0.0 and segments[-1]["end_seconds"] == pytest.approx(8.0)
    assert all(s["end_seconds"] - s["start_seconds"] == pytest.approx(window_seconds) for s in segments)
    labels = [s["predictions"][0]["label"] for s in segments]
    for segment, label in zip(segments, labels):
        if segment["end_seconds"] <= switch_seconds:
            assert label == "low", segment
        if segment["start_seconds"] >= switch_seconds:
            assert label == "high", segment
    first_high = segments[labels.index("high")]
    assert abs((first_high["start_seconds"] + first_high["end_seconds"]) / 2 - switch_seconds) <= hop_seconds
    # the recording's answer is the mean of its windows' probabilities
    assert outcome.predictions[0]["label"] == "low"  # 4.3 s of low against 3.7 s of high
    assert outcome.predictions == classifier.classify(str(path), top_k=1)
    assert classifier.segments(load_audio(path, RATE), top_k=1) == segments


def test_short_clip_is_one_segment_of_the_pipelines_answer(wav2vec2_dir, tmp_path):
    path = write_clip(tmp_path / "short.wav", class_clip("high", 0.7, RATE, seed=1), RATE)
    classifier = load_classifier(wav2vec2_dir)

    (outcome,) = classifier.classify_files([str(path)], top_k=2, segments=True)

    assert outcome.segments == [{"start_seconds": 0.0, "end_seconds": 0.7, "predictions": outcome.predictions}]


def test_window_defaults_and_limits(wav2vec2_dir, tmp_path):
    assert load_classifier(wav2vec2_dir).window_seconds == DEFAULT_WINDOW_SECONDS
    (wav2vec2_dir / "train_config.json").write_text(json.dumps({"window_seconds": 12.0}))
    try:
        classifier = load_classifier(wav2vec2_dir)
        assert (classifier.window_seconds, classifier.hop_seconds) == (12.0, 6.0)
    finally:
        (wav2vec2_dir / "train_config.json").unlink()
    whisper = tone_model("tiny-whisper", tmp_path / "whisper")
    assert load_classifier(whisper).window_seconds == 1.0  # fixed by the model
    with pytest.raises(ConfigError, match="fixed at 1 s"):
        load_classifier(whisper, window_seconds=5)
    with pytest.raises(ConfigError, match="--hop-seconds 2"):
        load_classifier(wav2vec2_dir, window_seconds=1, hop_seconds=2)


# --- bad inputs ---------------------------------------------------------------------------------


def test_bad_inputs_in_a_batch_are_reported_per_file(wav2vec2_dir, tmp_path):
    good = [write_clip(tmp_path / f"{label}.wav", class_clip(label, 0.8, 8000, seed=9), 8000) for label in LABELS]
    (tmp_path / "text.wav").write_text("not audio")
    (tmp_path / "empty.wav").write_bytes(b"")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good[0].read_bytes()[:-1000])
    sources = [str(good[0]), str(tmp_path / "missing.wav"), str(tmp_path / "text.wav"), str(good[1]),
               str(tmp_path / "empty.wav"), str(truncated), good[2].read_bytes()]
    classifier = load_classifier(wav2vec2_dir, batch_size=2)

    outcomes = list(classifier.classify_files(sources, top_k=1))

    assert [o.source for o in outcomes[:-1]] == sources[:-1] and outcomes[-1].source.endswith("bytes>")
    errors = {i: o.error for i, o in enumerate(outcomes) if o.error is not None}
    assert sorted(errors) == [1, 2, 4, 5]
    assert "not found" in errors[1] and "not a readable audio file" in errors[2]
    assert "empty" in errors[4] and "truncated" in errors[5]
    assert [outcomes[i].predictions[0]["label"] for i in (0, 3, 6)] == LABELS
    with pytest.raises(AudioLoadError, match="not found"):
        classifier.classify(str(tmp_path / "missing.wav"))


# --- the predict command ------------------------------------------------------------------------


@pytest.fixture
def clip_tree(tmp_path, monkeypatch) -> Path:
    """clips/ with one clip per label in nested folders, a long recording, a non-audio file and a hidden clip."""
    monkeypatch.chdir(tmp_path)
    for i, label in enumerate(LABELS):
        write_clip(tmp_path / "clips" / label / "take" / f"{label}.wav", class_clip(label, 0.8, 8000, seed=i), 8000)
    recording = np.concatenate([class_clip("low", 1.5, 8000, seed=7), class_clip("high", 1.5, 8000, seed=8)])
    write_clip(tmp_path / "clips" / "long.flac", recording, 8000)
    (tmp_path / "clips" / "notes.txt").write_text("not audio, and not picked up from a folder")
    write_clip(tmp_path / "clips" / ".hidden" / "skip.wav", class_clip("low", 0.5, 8000), 8000)
    return tmp_path


def test_predict_reads_folders_and_stdin_writes_csv_and_segments(wav2vec2_dir, clip_tree):
    result = runner.invoke(app, ["predict", str(wav2vec2_dir), "clips", "-", "--json", "--segments", "--top-k", "1",
                                 "--csv", "out.csv", "--window-seconds", "1", "--hop-seconds", "0.5",
                                 "--batch-size", "2", "--threads", "1", "--backend", "torch"],
                           input="clips/low/take/low.wav\nclips/missing.wav\n\n")

    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = ["clips/high/take/high.wav", "clips/long.flac", "clips/low/take/low.wav", "clips/noise/take/noise.wav",
                "clips/low/take/low.wav", "clips/missing.wav"]
    assert [row["path"] for row in rows] == expected
    assert [row["predictions"][0]["label"] for row in rows[:5] if row["path"] != "clips/long.flac"] == \
        ["high", "low", "noise", "low"]
    long_row = rows[1]
    assert [(s["start_seconds"], s["end_seconds"]) for s in long_row["segments"]] == \
        [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5), (2.0, 3.0)]
    assert long_row["segments"][0]["predictions"][0]["label"] == "low"
    assert long_row["segments"][-1]["predictions"][0]["label"] == "high"
    assert set(rows[5]) == {"path", "error"}
    csv_lines = Path("out.csv").read_text().splitlines()
    assert csv_lines[0] == "path,label,score,error" and len(csv_lines) == 7
    assert csv_lines[1].startswith("clips/high/take/high.wav,high,0.")
    assert csv_lines[6] == "clips/missing.wav,,,file not found"
    assert not list(Path().glob(".out.csv.*"))  # the temporary file was renamed
    # --timeline, the option's earlier name, is the same option
    alias = runner.invoke(app, ["predict", str(wav2vec2_dir), "clips/long.flac", "--json", "--timeline", "--top-k", "1",
                                "--window-seconds", "1", "--hop-seconds", "0.5"])
    assert json.loads(alias.stdout)["segments"] == long_row["segments"]


def test_predict_fails_only_when_nothing_was_classified(wav2vec2_dir, clip_tree):
    result = runner.invoke(app, ["predict", str(wav2vec2_dir), "clips/notes.txt", "nothing.wav", "--csv", "out.csv"])

    assert result.exit_code == 1
    assert "error: clips/notes.txt: not a readable audio file" in result.stderr
    assert len(Path("out.csv").read_text().splitlines()) == 3


def test_predict_flag_mistakes_are_one_line_errors(wav2vec2_dir, clip_tree):
    bad_backend = runner.invoke(app, ["predict", str(wav2vec2_dir), "clips", "--backend", "tensorflow"])
    no_onnx = runner.invoke(app, ["predict", str(wav2vec2_dir), "clips", "--backend", "onnx"])
    bad_hop = runner.invoke(app, ["predict", str(wav2vec2_dir), "clips", "--window-seconds", "1", "--hop-seconds", "3"])

    assert bad_backend.exit_code == no_onnx.exit_code == bad_hop.exit_code == 1
    assert "--backend 'tensorflow': must be one of torch, onnx" in bad_backend.stderr
    assert "has no model.onnx" in no_onnx.stderr and "audioclf export onnx" in no_onnx.stderr
    assert "--hop-seconds 3: must be positive and at most the window (1 s)" in bad_hop.stderr
