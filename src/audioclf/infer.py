"""Inference: load a model directory once and score clips, long recordings, paths or bytes, fast.

Every door (`predict` and its shards, `evaluate`, the final test metrics of `train`, `serve`, export's checks, the
Python API) scores a recording the same way, through `Classifier.score` and its batched forms: the recording is cut
into the windows of the model's `WindowPlan` (one window, itself, when it is no longer than the window), each window
is scored, and the recording's probabilities are the mean of its windows'. The result is a `ClipScores`.

Predictions are `[{"label": str, "score": float}, ...]`, highest first, scores a softmax over all labels, exactly
what `transformers.pipeline("audio-classification")` returns for the same model and a clip of at most one window.
Segments are `[{"start_seconds", "end_seconds", "predictions"}]`, one per window. Long recordings are decoded as a
stream, so memory stays flat in a recording's length.

Two backends run the model: torch (a transformers model directory) and ONNX Runtime (a directory written by
`audioclf export onnx`, run with numpy features so that neither torch nor transformers is imported). This module
imports neither at load time; each backend imports what it needs when it is built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from audioclf.audio import (MAX_SAMPLING_RATE, MIN_SAMPLING_RATE, AudioSource, describe_source, header_info,
                            load_audio, resample, stream_audio)
from audioclf.config import BACKENDS, DEFAULT_BATCH_SIZE, DEFAULT_TOP_K
from audioclf.errors import AudioLoadError, ConfigError, ModelError
from audioclf.features import NumpyFeatures, WindowPlan, whisper_window_seconds
from audioclf.files import MODEL_CONFIG_FILE, ONNX_MODEL_FILE, PREPROCESSOR_CONFIG_FILE, TRAIN_CONFIG_FILE

DECODE_WORKERS = 2  # threads decoding and resampling files ahead of the model (soundfile and soxr release the GIL)
CHUNK_BATCHES = 4  # files decoded ahead of the model, in batches: bounds the memory of decoded clips
# Clips batched together with an attention mask differ in length by at most this factor, so padding stays small.
MAX_PADDING_RATIO = 1.25


@dataclass(frozen=True)
class ClipScores:
    """One recording as the model scored it: the windows it was cut into, as (start, end) sample spans at
    `sampling_rate`, each window's softmax (windows, labels), and the recording's probabilities, their mean."""

    spans: tuple[tuple[int, int], ...]
    window_probabilities: np.ndarray
    sampling_rate: int

    @property
    def probabilities(self) -> np.ndarray:
        return self.window_probabilities.mean(axis=0)

    @property
    def duration_seconds(self) -> float:
        return self.spans[-1][1] / self.sampling_rate

    def predictions(self, id2label: dict[int, str], k: int | None = DEFAULT_TOP_K) -> list[dict]:
        return top_k(self.probabilities, id2label, k)

    def segments(self, id2label: dict[int, str], k: int | None = DEFAULT_TOP_K) -> list[dict]:
        """Per-window predictions `[{"start_seconds", "end_seconds", "predictions"}]`; one for a short clip."""
        rate = self.sampling_rate
        return [{"start_seconds": start / rate, "end_seconds": end / rate, "predictions": top_k(row, id2label, k)}
                for (start, end), row in zip(self.spans, self.window_probabilities)]


@dataclass(frozen=True)
class Outcome:
    """What became of one input: its scores and top-k predictions (and, on request, per-window segments), or why it
    could not be read."""

    source: str
    predictions: list[dict] | None = None
    error: str | None = None
    segments: list[dict] | None = None
    scores: ClipScores | None = None


def top_k(probabilities: np.ndarray, id2label: dict[int, str], k: int | None) -> list[dict]:
    """The k most likely labels of one clip as `[{"label", "score"}]`, highest first (all with k None).

    Every door's scores become predictions here, so this is where a NaN score stops: a ModelError, never a NaN in
    JSON (`predict` reports it as that file's error, the service as a 500)."""
    if not np.isfinite(probabilities).all():
        raise ModelError("the model gave non-finite scores (NaN or infinity); its weights or its input are broken")
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
        device = self.model.device  # a model just trained may still be on its GPU
        inputs = {name: value.to(device) for name, value in self.featurizer(list(clips)).items()}
        with self._torch.inference_mode():
            return self.model(**inputs).logits.float().cpu().numpy()

    def embeddings(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """The encoder's output that the head reads (the projector's input: the last layer's hidden states, or their
        learned weighted sum), averaged over time, shape (len(clips), hidden_size). Every frame counts, so clips
        batched together must not be padded (Whisper's are padded to its window alone, which its head reads too)."""
        projector = getattr(self.model, "projector", None)
        if projector is None:
            raise ModelError(f"embed: {self.model.config.model_type} models have no pooled encoder output to give "
                             "(supported: the wav2vec2 family and Whisper)")
        pooled: list = []
        hook = projector.register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0].mean(dim=1)))
        try:
            self.logits(clips)
        finally:
            hook.remove()
        return pooled[0].float().cpu().numpy()


class OnnxBackend:
    """A directory written by `audioclf export onnx`, run by ONNX Runtime on numpy features (no torch, no transformers)."""

    kind = "onnx"

    def __init__(self, directory: Path, threads: int | None = None, model_file: str = ONNX_MODEL_FILE):
        import onnxruntime as ort

        directory = Path(directory)
        config = _read_json(directory / MODEL_CONFIG_FILE)
        preprocessor = _read_json(directory / PREPROCESSOR_CONFIG_FILE)
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
        self.window_seconds = whisper_window_seconds(config["max_source_positions"]) if self.fixed_window else None
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


# --- batching ------------------------------------------------------------------------------------


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


class Classifier:
    """A loaded model ready to score clips (arrays at its rate), paths or bytes, short or long.

    `model` is a ModelBundle (run by torch) or a Backend. `plan` is how recordings are cut into windows: the model's
    fixed window (Whisper) or `window_seconds`, else the default of features.inference_window_seconds, windows
    `hop_seconds` apart. `score` (one recording), `score_clips` (arrays, batched together) and `classify_files` (paths
    or bytes, decoded ahead) all cut the same windows and combine them the same way.
    """

    def __init__(self, model, name: str = "", batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None,
                 window_seconds: float | None = None, hop_seconds: float | None = None,
                 decode_workers: int = DECODE_WORKERS, trained_window_seconds: float | None = None):
        self.backend: Backend = model if hasattr(model, "logits") else TorchBackend(model, threads)
        self.name = name
        if batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be 1 or more")
        self.batch_size = batch_size
        self.decode_workers = max(1, decode_workers)
        self.id2label = dict(self.backend.id2label)
        self.plan = WindowPlan.resolve(self.backend.sampling_rate, self.backend.window_seconds, window_seconds,
                                       hop_seconds, trained_window_seconds)

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in sorted(self.id2label)]

    @property
    def sampling_rate(self) -> int:
        return self.backend.sampling_rate

    @property
    def window_seconds(self) -> float:
        return self.plan.window_seconds

    @property
    def hop_seconds(self) -> float:
        return self.plan.hop_seconds

    # -- the one scoring path --

    def score(self, clip: np.ndarray | AudioSource) -> ClipScores:
        """The scores of one clip or recording: an array at the model's rate, a path, or encoded bytes (streamed).
        Raises AudioLoadError for a path or bytes that cannot be decoded."""
        if isinstance(clip, np.ndarray):
            return self.score_clips([clip])[0]
        name = describe_source(clip)
        return self._score_stream(self.plan.stream(stream_audio(clip, self.sampling_rate, name)))

    def score_clips(self, clips: Sequence[np.ndarray]) -> list[ClipScores]:
        """The scores of clips held in memory (arrays at the model's rate), all their windows run in one batched
        pass."""
        cuts = [self.plan.cut(clip) for clip in clips]
        windows = [window for _, clip_windows in cuts for window in clip_windows]
        if not windows:
            return []
        probabilities = self.window_probabilities(windows)
        bounds = np.cumsum([0] + [len(spans) for spans, _ in cuts])
        return [self.combine(spans, probabilities[a:b]) for (spans, _), a, b in zip(cuts, bounds[:-1], bounds[1:])]

    def combine(self, spans: Sequence[tuple[int, int]], window_probabilities: np.ndarray) -> ClipScores:
        """A recording's scores from its windows' (`plan.cut` spans, `window_probabilities` rows): for a door that
        runs the windows itself, such as the service's micro-batches."""
        return ClipScores(tuple(spans), np.asarray(window_probabilities), self.sampling_rate)

    def window_probabilities(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax scores, shape (len(windows), n_labels), of windows at the model's rate, each at most one window
        long and scored whole as the pipeline scores a clip (Whisper: padded to its window). Longer clips must be cut
        by `plan` first (`score` and `score_clips` do), so nothing longer is ever silently cut to its start.

        Windows are batched by length. Models that take no attention mask are only batched with windows of exactly
        the same length, because zero padding would change their outputs.
        """
        self._check_windows(windows)
        result = np.zeros((len(windows), len(self.id2label)), dtype=np.float32)
        backend = self.backend
        equal_only = not backend.fixed_window and not backend.uses_attention_mask
        for batch in plan_batches([len(w) for w in windows], self.batch_size, equal_only, backend.fixed_window):
            result[batch] = softmax(backend.logits([windows[i] for i in batch]))
        return result

    # -- conveniences on top of it --

    def classify(self, clip: np.ndarray | AudioSource, *, sampling_rate: int | None = None,
                 top_k: int | None = DEFAULT_TOP_K) -> list[dict]:
        """The `top_k` most likely labels (all with None) of one clip or recording, `[{"label", "score"}]` highest
        first, as `pipeline("audio-classification")` gives them. `clip` is a path, encoded bytes, or a 1-D array of
        samples at `sampling_rate` (default: the model's; another is resampled). See `score`."""
        return self.score(self._samples(clip, sampling_rate)).predictions(self.id2label, top_k)

    def classify_batch(self, clips: Iterable[np.ndarray | AudioSource], *, sampling_rate: int | None = None,
                       top_k: int | None = DEFAULT_TOP_K) -> list[list[dict]]:
        """`classify` for several clips, in order: arrays (all at `sampling_rate`) scored together in one batched
        pass, paths and bytes decoded ahead and batched by length as `classify_files` does. A file that cannot be
        decoded raises its AudioLoadError."""
        return [scores.predictions(self.id2label, top_k) for scores in self._scores(clips, sampling_rate)]

    def segments(self, clip: np.ndarray | AudioSource, *, sampling_rate: int | None = None,
                 top_k: int | None = DEFAULT_TOP_K) -> list[dict]:
        """Per-window predictions `[{"start_seconds", "end_seconds", "predictions"}]`, one for a short clip."""
        return self.score(self._samples(clip, sampling_rate)).segments(self.id2label, top_k)

    def embed(self, clip: np.ndarray | AudioSource, *, sampling_rate: int | None = None) -> np.ndarray:
        """The pooled encoder output of one clip or recording, shape (hidden_size,), as SpeechBrain's `encode_batch`
        gives an utterance embedding: what the head reads, averaged over time and, for a recording longer than the
        model's window, over the same windows `score` cuts. Needs the torch backend."""
        clip = self._samples(clip, sampling_rate)
        if isinstance(clip, np.ndarray):
            return self.embed_batch([clip])[0]
        name = describe_source(clip)
        _, rows = self._stream_rows(self.plan.stream(stream_audio(clip, self.sampling_rate, name)),
                                    self.window_embeddings)
        return rows.mean(axis=0)

    def embed_batch(self, clips: Iterable[np.ndarray | AudioSource], *,
                    sampling_rate: int | None = None) -> np.ndarray:
        """`embed` for several clips, shape (len(clips), hidden_size); arrays' windows run in one batched pass."""
        clips = [self._samples(clip, sampling_rate) for clip in clips]
        arrays = [i for i, clip in enumerate(clips) if isinstance(clip, np.ndarray)]
        cuts = [self.plan.cut(clips[i]) for i in arrays]
        windows = [window for _, clip_windows in cuts for window in clip_windows]
        rows = self.window_embeddings(windows) if windows else np.zeros((0, 0), dtype=np.float32)
        bounds = np.cumsum([0] + [len(spans) for spans, _ in cuts])
        embedded = {i: rows[a:b].mean(axis=0) for i, a, b in zip(arrays, bounds[:-1], bounds[1:])}
        embedded.update({i: self.embed(clip) for i, clip in enumerate(clips) if i not in embedded})
        return np.stack([embedded[i] for i in range(len(clips))]) if clips else np.zeros((0, 0), dtype=np.float32)

    def window_embeddings(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled encoder outputs, shape (len(windows), hidden_size), of windows at most one window long (as
        `window_probabilities` takes them). Batched by length, only equal lengths together where a model has no
        fixed window: the mean is over every frame, so padding would change it."""
        embeddings = getattr(self.backend, "embeddings", None)
        if embeddings is None:
            raise ModelError(f"embed: the {self.backend.kind} backend gives only the model's logits; load the model "
                             "directory with backend='torch'")
        self._check_windows(windows)
        fixed = self.backend.fixed_window
        rows: dict[int, np.ndarray] = {}
        for batch in plan_batches([len(w) for w in windows], self.batch_size, not fixed, fixed):
            rows.update(zip(batch, embeddings([windows[i] for i in batch])))
        return np.stack([rows[i] for i in range(len(windows))])

    def classify_files(self, sources: Iterable[AudioSource], top_k: int | None = DEFAULT_TOP_K,
                       segments: bool = False) -> Iterator[Outcome]:
        """Score paths or bytes in order, decoding ahead in a thread pool and batching clips of similar length.
        An unreadable one yields its error and the rest go on. With `segments`, outcomes carry per-window ones."""
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
                yield from self._score_chunk([f.result() for f in chunk], top_k, segments)

    # -- internals --

    def _samples(self, clip: np.ndarray | AudioSource, sampling_rate: int | None) -> np.ndarray | AudioSource:
        """A path or bytes as they are; a 1-D array of samples at `sampling_rate` resampled to the model's rate."""
        if not isinstance(clip, np.ndarray):
            if sampling_rate is not None:
                raise ConfigError(f"sampling_rate={sampling_rate}: only for arrays of samples; a file's own rate is "
                                  f"read from it ({describe_source(clip)})")
            return clip
        if clip.ndim != 1:
            raise ConfigError(f"a clip is a 1-D array of mono samples; got one shaped {clip.shape} (average the "
                              "channels first, e.g. audioclf.audio.to_mono)")
        rate = self.sampling_rate if sampling_rate is None else int(sampling_rate)
        if not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
            raise ConfigError(f"sampling_rate={sampling_rate}: must be {MIN_SAMPLING_RATE}-{MAX_SAMPLING_RATE} Hz")
        return resample(clip.astype(np.float32, copy=False), rate, self.sampling_rate)

    def _scores(self, clips: Iterable[np.ndarray | AudioSource], sampling_rate: int | None) -> list[ClipScores]:
        """The ClipScores of each clip, in order: arrays through `score_clips`, files through `classify_files`."""
        clips = [self._samples(clip, sampling_rate) for clip in clips]
        arrays = [i for i, clip in enumerate(clips) if isinstance(clip, np.ndarray)]
        files = [i for i, clip in enumerate(clips) if not isinstance(clip, np.ndarray)]
        scores = dict(zip(arrays, self.score_clips([clips[i] for i in arrays])))
        for i, outcome in zip(files, self.classify_files([clips[i] for i in files], top_k=None)):
            if outcome.scores is None:
                raise AudioLoadError(outcome.source, outcome.error)
            scores[i] = outcome.scores
        return [scores[i] for i in range(len(clips))]

    def _check_windows(self, windows: Sequence[np.ndarray]) -> None:
        longest = max((len(w) for w in windows), default=0)
        if longest > self.plan.window_samples:
            raise ValueError(f"a window of {longest} samples is longer than the plan's {self.plan.window_samples}; "
                             f"score recordings with Classifier.score or score_clips")

    def _decode(self, source: AudioSource) -> _Decoded:
        name = describe_source(source)
        try:
            info = header_info(source, name)
            if 0 < info.frames <= self.window_seconds * info.sampling_rate:
                return _Decoded(name, samples=load_audio(source, self.sampling_rate))
            return _Decoded(name, stream=source)  # long (or of unknown length): streamed when its turn comes
        except AudioLoadError as e:
            return _Decoded(name, error=e.reason)

    def _score_chunk(self, decoded: list[_Decoded], k: int | None, segments: bool) -> Iterator[Outcome]:
        # every clip held in memory is scored in one batched pass; recordings too long to hold stream in turn
        held = iter(self.score_clips([d.samples for d in decoded if d.samples is not None]))
        for d in decoded:
            if d.error is not None:
                yield Outcome(d.name, error=d.error)
                continue
            if d.stream is not None:
                try:
                    scores = self.score(d.stream)
                except AudioLoadError as e:
                    yield Outcome(d.name, error=e.reason)
                    continue
            else:
                scores = next(held)
            try:
                outcome = Outcome(d.name, predictions=scores.predictions(self.id2label, k),
                                  segments=scores.segments(self.id2label, k) if segments else None, scores=scores)
            except ModelError as e:  # non-finite scores: this file's error, not the end of the run
                outcome = Outcome(d.name, error=str(e), scores=scores)
            yield outcome

    def _score_stream(self, windows: Iterator[tuple[int, np.ndarray]]) -> ClipScores:
        """Windows of a stream, scored a batch at a time as they arrive; only their probabilities are kept."""
        return self.combine(*self._stream_rows(windows, self.window_probabilities))

    def _stream_rows(self, windows: Iterator[tuple[int, np.ndarray]], rows_of) -> tuple[list[tuple[int, int]],
                                                                                        np.ndarray]:
        """The spans of a stream's windows and `rows_of` them (window_probabilities or window_embeddings), run a
        batch at a time as the windows arrive, so only one batch of samples is held."""
        spans: list[tuple[int, int]] = []
        parts: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for start, samples in windows:
            spans.append((start, start + len(samples)))
            batch.append(samples)
            if len(batch) == self.batch_size:
                parts.append(rows_of(batch))
                batch = []
        if batch:
            parts.append(rows_of(batch))
        return spans, np.concatenate(parts)


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

    Its windows follow features.inference_window_seconds, with the training window from train_config.json.
    """
    chosen = pick_backend(model_dir, backend)
    if chosen == "onnx":
        model = OnnxBackend(Path(model_dir), threads)
    else:
        from audioclf.model import load_model

        model = TorchBackend(load_model(str(model_dir), argument="MODEL_DIR"), threads)
    return Classifier(model, name=Path(str(model_dir)).name, batch_size=batch_size, window_seconds=window_seconds,
                      hop_seconds=hop_seconds, trained_window_seconds=trained_window_seconds(Path(model_dir)))
