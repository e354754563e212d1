"""Inference: load a model directory once, classify clips, return the pipeline's shape.

Predictions are `[{"label": str, "score": float}, ...]`, highest first, scores a softmax over all labels,
exactly what `transformers.pipeline("audio-classification")` returns for the same model and clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audioclf.audio import AudioSource, load_audio
from audioclf.errors import AudioLoadError
from audioclf.features import BatchFeaturizer
from audioclf.model import ModelBundle, load_model

DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class Outcome:
    """What became of one input: predictions, or the reason it could not be read."""

    source: str
    predictions: list[dict] | None = None
    error: str | None = None


def top_k(probabilities: np.ndarray, id2label: dict[int, str], k: int | None) -> list[dict]:
    """The k most likely labels of one clip as `[{"label", "score"}]`, highest first (all with k None)."""
    order = np.argsort(-probabilities, kind="stable")
    if k is not None:
        order = order[: max(1, k)]
    return [{"label": id2label[int(i)], "score": float(probabilities[i])} for i in order]


class Classifier:
    """A loaded model ready to classify clips (arrays at its rate, paths or bytes)."""

    def __init__(self, bundle: ModelBundle, name: str = "", batch_size: int = DEFAULT_BATCH_SIZE):
        self.bundle = bundle
        self.name = name
        self.batch_size = batch_size
        self.model = bundle.model.eval()
        self.featurizer = BatchFeaturizer(bundle.feature_extractor, bundle.model_type, bundle.uses_attention_mask)
        self.id2label = {int(i): label for i, label in bundle.model.config.id2label.items()}

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in sorted(self.id2label)]

    @property
    def sampling_rate(self) -> int:
        return self.bundle.sampling_rate

    def probabilities(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax scores, shape (len(clips), n_labels), for mono clips at the model's sampling rate.

        Clips are batched by length. Models that take no attention mask are only batched with clips of
        exactly the same length, because zero padding would change their outputs.
        """
        result = np.zeros((len(clips), len(self.id2label)), dtype=np.float32)
        for batch in self._batches(clips):
            inputs = self.featurizer([clips[i] for i in batch])
            with torch.inference_mode():
                logits = self.model(**inputs).logits
            result[batch] = torch.softmax(logits.float(), dim=-1).numpy()
        return result

    def _batches(self, clips: Sequence[np.ndarray]) -> Iterator[list[int]]:
        exact = self.bundle.model_type != "whisper" and not self.bundle.uses_attention_mask
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) == self.batch_size or (exact and len(clips[i]) != len(clips[batch[0]]))):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def classify(self, clip: np.ndarray | AudioSource, top_k_labels: int | None = 5) -> list[dict]:
        """Top-k predictions for one clip: an array at the model's rate, a path, or encoded bytes."""
        samples = clip if isinstance(clip, np.ndarray) else load_audio(clip, self.sampling_rate)
        return top_k(self.probabilities([samples])[0], self.id2label, top_k_labels)

    def classify_files(self, sources: Iterable[AudioSource], top_k_labels: int | None = 5) -> Iterator[Outcome]:
        """Classify paths or bytes, in batches; an unreadable one yields its error and the rest go on."""
        pending: list[tuple[str, np.ndarray]] = []
        for source in sources:
            name = str(source) if isinstance(source, (str, Path)) else f"<{len(source)} bytes>"
            try:
                pending.append((name, load_audio(source, self.sampling_rate)))
            except AudioLoadError as e:
                yield from self._flush(pending, top_k_labels)
                pending = []
                yield Outcome(name, error=e.reason)
                continue
            if len(pending) >= self.batch_size * 4:
                yield from self._flush(pending, top_k_labels)
                pending = []
        yield from self._flush(pending, top_k_labels)

    def _flush(self, pending: list[tuple[str, np.ndarray]], k: int | None) -> Iterator[Outcome]:
        if not pending:
            return
        probabilities = self.probabilities([samples for _, samples in pending])
        for (name, _), row in zip(pending, probabilities):
            yield Outcome(name, predictions=top_k(row, self.id2label, k))


def load_classifier(model_dir: str | Path, batch_size: int = DEFAULT_BATCH_SIZE) -> Classifier:
    """Load a trained model directory (or Hub id) once for classification."""
    return Classifier(load_model(str(model_dir)), name=Path(str(model_dir)).name, batch_size=batch_size)
