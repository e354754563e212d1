"""Inference: load a model directory once, classify clips, long recordings, paths or bytes, fast.

Predictions are `[{"label": str, "score": float}, ...]`, highest first, scores a softmax over all labels, exactly
what `transformers.pipeline("audio-classification")` returns for the same model and a clip of at most one window.
Longer recordings are decoded as a stream and classified in sliding windows whose probabilities are averaged, so
memory stays flat in a recording's length.

Two backends run the model: torch (a transformers model directory) and ONNX Runtime (a directory written by
`audioclf export onnx`, run with numpy features so that neither torch nor transformers is imported). This module
imports neither at load time; each backend imports what it needs when it is built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from audioclf.audio import AudioSource, describe_source, header_info, load_audio, stream_audio
from audioclf.errors import AudioLoadError, ConfigError, ModelError

DEFAULT_BATCH_SIZE = 8
# Models without a fixed input window (the wav2vec2 family) see recordings up to this long whole, as the pipeline
# does; longer ones are windowed so attention cost and memory stay bounded. A longer training window wins.
DEFAULT_WINDOW_SECONDS = 10.0
DEFAULT_HOP_FRACTION = 0.5  # default hop: half a window, so every moment is seen by two windows
DECODE_WORKERS = 2  # threads decoding and resampling files ahead of the model (soundfile and soxr release the GIL)
CHUNK_BATCHES = 4  # files decoded ahead of the model, in batches: bounds the memory of decoded clips
# Clips batched together with an attention mask differ in length by at most this factor, so padding stays small.
MAX_PADDING_RATIO = 1.25
BACKENDS = ("torch", "onnx")
ONNX_MODEL_FILE = "model.onnx"
TRAIN_CONFIG_FILE = "train_config.json"
WHISPER_FRAMES_PER_SECOND = 50  # 100 mel frames/s, halved by the encoder's stride-2 conv (as model.py has it)


@dataclass(frozen=True)
class Outcome:
    """What became of one input: predictions (and, on request, per-window segments), or why it could not be read."""

    source: str
    predictions: list[dict] | None = None
    error: str | None = None
    segments: list[dict] | None = None


def top_k(probabilities: np.ndarray, id2label: dict[int, str], k: int | None) -> list[dict]:
    """The k most likely labels of one clip as `[{"label", "score"}]`, highest first (all with k None)."""
    order = np.argsort(-probabilities, kind="stable")
    if k is not None:
        order = order[: max(1, k)]
    return [{"label": id2label[int(i)], "score": float(probabilities[i])} for i in order]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# --- backends -----------------------------------------------------------------------------------


class Backend(Protocol):
    """What the classifier needs of a loaded model: logits for a batch of clips at its sampling rate."""

    kind: str  # "torch" or "onnx"
    id2label: dict[int, str]
    sampling_rate: int
    window_seconds: float | None  # the fixed input window (Whisper), else None
    fixed_window: bool  # every clip is padded or cut to the window, so any clips batch together without change
    uses_attention_mask: bool  # padded batches carry a mask; without one only clips of equal length are batched

    def logits(self, clips: Sequence[np.ndarray]) -> np.ndarray: ...


class TorchBackend:
    """A transformers model run by torch, with its own feature extractor: the pipeline's computation, batched."""

    kind = "torch"

    def __init__(self, bundle, threads: int | None = None):
        import torch

        from audioclf.features import BatchFeaturizer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.featurizer = BatchFeaturizer(bundle.feature_extractor, bundle.model_type, bundle.uses_attention_mask)
        self.id2label = {int(i): label for i, label in bundle.model.config.id2label.items()}
        self.sampling_rate = bundle.sampling_rate
        self.window_seconds = bundle.window_seconds
        self.fixed_window = bundle.model_type == "whisper"
        self.uses_attention_mask = bundle.uses_attention_mask

    def logits(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        inputs = self.featurizer(list(clips))
        with self._torch.inference_mode():
            return self.model(**inputs).logits.float().numpy()


class OnnxBackend:
    """A directory written by `audioclf export onnx`, run by ONNX Runtime on numpy features (no torch, no transformers)."""

    kind = "onnx"

    def __init__(self, directory: Path, threads: int | None = None, model_file: str = ONNX_MODEL_FILE):
        import onnxruntime as ort

        directory = Path(directory)
        config = _read_json(directory / "config.json")
        preprocessor = _read_json(directory / "preprocessor_config.json")
        self.model_type = config.get("model_type", "")
        self.id2label = {int(i): label for i, label in config["id2label"].items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: one per core
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(directory / model_file), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"{directory / model_file}: cannot be loaded by ONNX Runtime ({e})") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.uses_attention_mask = "attention_mask" in self.input_names
        self.fixed_window = self.model_type == "whisper"
        self.window_seconds = config["max_source_positions"] / WHISPER_FRAMES_PER_SECOND if self.fixed_window else None
        self.features = NumpyFeatures(preprocessor, self.model_type, self.uses_attention_mask)
        self.sampling_rate = self.features.sampling_rate

    def logits(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        inputs = self.features(clips)
        return self.session.run(["logits"], {name: inputs[name] for name in self.input_names})[0].astype(np.float32)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ModelError(f"{path.parent}: no {path.name}; an exported directory needs it next to {ONNX_MODEL_FILE}") from e
    except ValueError as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from e


# --- numpy features (the ONNX backend's; equal to transformers' extractors, see tests/test_export.py) ------------


class NumpyFeatures:
    """Model inputs from clips, as numpy arrays, from a saved `preprocessor_config.json`.

    Whisper: clips padded or cut to the window, then the log-mel spectrogram (periodic Hann STFT, Slaney mel filters,
    log10, floor at max - 8, scaled by (x + 4) / 4). wav2vec2 family: each clip normalised to zero mean and unit
    variance, then zero-padded to the longest, with an attention mask for models that take one.
    """

    def __init__(self, preprocessor: dict, model_type: str, uses_attention_mask: bool):
        self.model_type = model_type
        self.uses_attention_mask = uses_attention_mask
        self.sampling_rate = int(preprocessor.get("sampling_rate", 16000))
        self.padding_value = float(preprocessor.get("padding_value", 0.0))
        self.do_normalize = bool(preprocessor.get("do_normalize", False))
        if model_type == "whisper":
            self.n_fft = int(preprocessor.get("n_fft", 400))
            self.hop_length = int(preprocessor.get("hop_length", 160))
            self.n_samples = int(preprocessor.get("chunk_length", 30)) * self.sampling_rate
            self.mel_filters = mel_filters(self.n_fft, int(preprocessor.get("feature_size", 80)), self.sampling_rate)
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
        log_spec = np.maximum(log_spec, log_spec.max(axis=(1, 2), keepdims=True) - 8.0)  # per clip
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


def mel_filters(n_fft: int, n_mels: int, sampling_rate: int, max_hertz: float = 8000.0) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape (n_fft // 2 + 1, n_mels), as Whisper's extractor builds them."""
    fft_hertz = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)
    edges = _mel_to_hertz(np.linspace(_hertz_to_mel(np.array([0.0]))[0], _hertz_to_mel(np.array([max_hertz]))[0], n_mels + 2))
    slopes = edges[None, :] - fft_hertz[:, None]
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[None, :]


# --- streaming decode and sliding windows -------------------------------------------------------


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


def plan_batches(lengths: Sequence[int], batch_size: int, equal_lengths_only: bool, any_lengths: bool) -> list[list[int]]:
    """Indices of clips to run together, shortest first. With `any_lengths` (a fixed-window model) clips batch
    freely; with `equal_lengths_only` (no attention mask: padding would change the outputs) only clips of exactly
    the same length share a batch; otherwise a batch spans at most MAX_PADDING_RATIO in length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        if batch:
            first = lengths[batch[0]]
            if (len(batch) == batch_size
                    or (equal_lengths_only and lengths[i] != first)
                    or (not any_lengths and lengths[i] > first * MAX_PADDING_RATIO)):
                batches.append(batch)
                batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


# --- the classifier -----------------------------------------------------------------------------


@dataclass
class _Decoded:
    """A file after the decode pool has seen it: its samples, or (too long to hold) its source, or an error."""

    name: str
    samples: np.ndarray | None = None
    stream: AudioSource | None = None
    error: str | None = None


@dataclass
class _Scored:
    """One recording's windows and their probabilities, shape (windows, labels)."""

    spans: list[tuple[int, int]]
    probabilities: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.probabilities.mean(axis=0)


class Classifier:
    """A loaded model ready to classify clips (arrays at its rate), paths or bytes, short or long.

    `model` is a ModelBundle (run by torch) or a Backend. Recordings longer than `window_seconds` are classified in
    windows `hop_seconds` apart and their probabilities averaged; shorter ones whole.
    """

    def __init__(self, model, name: str = "", batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None,
                 window_seconds: float | None = None, hop_seconds: float | None = None,
                 decode_workers: int = DECODE_WORKERS):
        self.backend: Backend = model if hasattr(model, "logits") else TorchBackend(model, threads)
        # the torch backend's ModelBundle, or the backend itself: both tell `window_seconds`
        self.bundle = getattr(self.backend, "bundle", self.backend)
        self.name = name
        if batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be 1 or more")
        self.batch_size = batch_size
        self.decode_workers = max(1, decode_workers)
        self.id2label = dict(self.backend.id2label)
        self.window_seconds, self.hop_seconds = resolve_windows(self.backend.window_seconds, window_seconds, hop_seconds)

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in sorted(self.id2label)]

    @property
    def sampling_rate(self) -> int:
        return self.backend.sampling_rate

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sampling_rate)

    @property
    def hop_samples(self) -> int:
        return max(1, round(self.hop_seconds * self.sampling_rate))

    def probabilities(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax scores, shape (len(clips), n_labels), of mono clips at the model's rate, each scored whole as the
        pipeline scores it (Whisper: padded or cut to its window). No windowing here: see `classify` for that.

        Clips are batched by length. Models that take no attention mask are only batched with clips of exactly the
        same length, because zero padding would change their outputs.
        """
        result = np.zeros((len(clips), len(self.id2label)), dtype=np.float32)
        backend = self.backend
        equal_only = not backend.fixed_window and not backend.uses_attention_mask
        for batch in plan_batches([len(c) for c in clips], self.batch_size, equal_only, backend.fixed_window):
            result[batch] = softmax(backend.logits([clips[i] for i in batch]))
        return result

    def classify(self, clip: np.ndarray | AudioSource, top_k_labels: int | None = 5) -> list[dict]:
        """Top-k predictions for one clip or recording: an array at the model's rate, a path, or encoded bytes.
        Raises AudioLoadError for a path or bytes that cannot be decoded."""
        return top_k(self._score(clip).mean, self.id2label, top_k_labels)

    def timeline(self, clip: np.ndarray | AudioSource, top_k_labels: int | None = 5) -> list[dict]:
        """Per-window predictions `[{"start", "end", "predictions"}]` (seconds), one window for a short clip."""
        return self._segments(self._score(clip), top_k_labels)

    def classify_files(self, sources: Iterable[AudioSource], top_k_labels: int | None = 5,
                       timeline: bool = False) -> Iterator[Outcome]:
        """Classify paths or bytes in order, decoding ahead in a thread pool and batching clips of similar length.
        An unreadable one yields its error and the rest go on. With `timeline`, outcomes carry their segments."""
        chunk_size = self.batch_size * CHUNK_BATCHES
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="audioclf-decode") as pool:
            pending: list[Future] = []
            iterator = iter(sources)
            exhausted = False
            while True:
                # keep the next chunk decoding while this one is classified
                while not exhausted and len(pending) < 2 * chunk_size:
                    try:
                        pending.append(pool.submit(self._decode, next(iterator)))
                    except StopIteration:
                        exhausted = True
                if not pending:
                    return
                chunk, pending = pending[:chunk_size], pending[chunk_size:]
                yield from self._classify_chunk([f.result() for f in chunk], top_k_labels, timeline)

    # -- internals --

    def _decode(self, source: AudioSource) -> _Decoded:
        name = describe_source(source)
        try:
            info = header_info(source, name)
            if 0 < info.frames <= self.window_seconds * info.sampling_rate:
                return _Decoded(name, samples=load_audio(source, self.sampling_rate))
            return _Decoded(name, stream=source)  # long (or of unknown length): streamed when its turn comes
        except AudioLoadError as e:
            return _Decoded(name, error=e.reason)

    def _classify_chunk(self, decoded: list[_Decoded], k: int | None, timeline: bool) -> Iterator[Outcome]:
        # every clip held in memory is scored in one batched pass; recordings too long to hold stream in turn
        held = iter(self._score_arrays([d.samples for d in decoded if d.samples is not None]))
        for d in decoded:
            if d.error is not None:
                yield Outcome(d.name, error=d.error)
                continue
            if d.stream is not None:
                try:
                    result = self._score_windows(stream_windows(stream_audio(d.stream, self.sampling_rate, d.name),
                                                                self.window_samples, self.hop_samples))
                except AudioLoadError as e:
                    yield Outcome(d.name, error=e.reason)
                    continue
            else:
                result = next(held)
            yield Outcome(d.name, predictions=top_k(result.mean, self.id2label, k),
                          segments=self._segments(result, k) if timeline else None)

    def _score(self, clip: np.ndarray | AudioSource) -> _Scored:
        if isinstance(clip, np.ndarray):
            return self._score_arrays([clip])[0]
        name = describe_source(clip)
        return self._score_windows(stream_windows(stream_audio(clip, self.sampling_rate, name),
                                                  self.window_samples, self.hop_samples))

    def _score_arrays(self, clips: Sequence[np.ndarray]) -> list[_Scored]:
        """All windows of clips held in memory, scored in one batched pass."""
        spans = [window_spans(len(clip), self.window_samples, self.hop_samples) for clip in clips]
        windows = [clip[start:end] for clip, clip_spans in zip(clips, spans) for start, end in clip_spans]
        if not windows:
            return []
        probabilities = self.probabilities(windows)
        bounds = np.cumsum([0] + [len(s) for s in spans])
        return [_Scored(s, probabilities[a:b]) for s, a, b in zip(spans, bounds[:-1], bounds[1:])]

    def _score_windows(self, windows: Iterator[tuple[int, np.ndarray]]) -> _Scored:
        """Windows of a stream, scored a batch at a time as they arrive; only their probabilities are kept."""
        spans: list[tuple[int, int]] = []
        parts: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for start, samples in windows:
            spans.append((start, start + len(samples)))
            batch.append(samples)
            if len(batch) == self.batch_size:
                parts.append(self.probabilities(batch))
                batch = []
        if batch:
            parts.append(self.probabilities(batch))
        return _Scored(spans, np.concatenate(parts))

    def _segments(self, scored: _Scored, k: int | None) -> list[dict]:
        rate = self.sampling_rate
        return [{"start": round(start / rate, 3), "end": round(end / rate, 3), "predictions": top_k(row, self.id2label, k)}
                for (start, end), row in zip(scored.spans, scored.probabilities)]


def resolve_windows(fixed_seconds: float | None, window_seconds: float | None,
                    hop_seconds: float | None) -> tuple[float, float]:
    """(window, hop) in seconds: the model's fixed window (Whisper) or the one asked for, else DEFAULT_WINDOW_SECONDS;
    the hop as asked, else half the window."""
    if fixed_seconds is not None:
        if window_seconds is not None and not math.isclose(window_seconds, fixed_seconds):
            raise ConfigError(f"--window-seconds {window_seconds:g}: this model's input window is fixed at "
                              f"{fixed_seconds:g} s (leave the flag out)")
        window = float(fixed_seconds)
    else:
        window = float(window_seconds) if window_seconds is not None else DEFAULT_WINDOW_SECONDS
    if not window > 0:
        raise ConfigError(f"--window-seconds {window:g}: must be positive")
    hop = float(hop_seconds) if hop_seconds is not None else window * DEFAULT_HOP_FRACTION
    if not 0 < hop <= window:
        raise ConfigError(f"--hop-seconds {hop:g}: must be positive and at most the window ({window:g} s)")
    return window, hop


def trained_window_seconds(model_dir: Path) -> float | None:
    """The clip window the model was trained with, from train_config.json, if there is one."""
    try:
        value = json.loads((Path(model_dir) / TRAIN_CONFIG_FILE).read_text()).get("window_seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def pick_backend(model_dir: str | Path, backend: str | None = None) -> str:
    """The backend for a model directory: as asked, else onnx where the directory holds model.onnx, else torch."""
    has_onnx = (Path(model_dir) / ONNX_MODEL_FILE).is_file()
    if backend is None:
        return "onnx" if has_onnx else "torch"
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    if backend == "onnx" and not has_onnx:
        raise ModelError(f"--backend onnx: {model_dir} has no {ONNX_MODEL_FILE}; "
                         f"write one with `audioclf export onnx {model_dir} OUT`")
    return backend


def load_classifier(model_dir: str | Path, batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None,
                    backend: str | None = None, window_seconds: float | None = None,
                    hop_seconds: float | None = None) -> Classifier:
    """Load a trained model directory (or Hub id), or an exported ONNX directory, once for classification.

    Models without a fixed window default to the longer of DEFAULT_WINDOW_SECONDS and their training window.
    """
    chosen = pick_backend(model_dir, backend)
    if chosen == "onnx":
        model = OnnxBackend(Path(model_dir), threads)
    else:
        from audioclf.model import load_model

        model = TorchBackend(load_model(str(model_dir)), threads)
    if window_seconds is None and model.window_seconds is None:
        window_seconds = max(DEFAULT_WINDOW_SECONDS, trained_window_seconds(Path(model_dir)) or 0.0)
    return Classifier(model, name=Path(str(model_dir)).name, batch_size=batch_size, window_seconds=window_seconds,
                      hop_seconds=hop_seconds)
