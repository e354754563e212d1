"""Probe training: the encoder stays frozen, so its per-layer outputs for a clip never change. One pass
stores, per clip, the mean over time of every hidden layer (cached on disk); then exactly the head that
transformers' classifiers have with `use_weighted_layer_sum=True` (softmax layer weights, projector,
classifier) is trained on those numbers, in seconds. In a run over several processes, each encodes its share of
the clips and the main process gathers, caches and trains (see train._layer_means_across).

Exactness: pooling is a mean over all of a clip's frames and the head is linear before it, so
head(cached means) equals the saved model's logits whenever every clip is encoded alone (wav2vec2 family:
one clip per forward pass, no padding) or fills a fixed window (Whisper: padding frames are part of the
window and of the mean, in the cache and in the model alike).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audioclf.features import BatchFeaturizer
from audioclf.model import ModelBundle

PROBE_MAX_STEPS = 1000  # full-batch AdamW steps at most; a few seconds on cached means
PROBE_EVAL_EVERY = 10  # steps between validation checks for early stopping
PROBE_PATIENCE = 20  # checks without a better validation accuracy before stopping
PROBE_LEARNING_RATE = 3e-3
PROBE_WEIGHT_DECAY = 1e-2


def cache_dir() -> Path:
    """Where layer features are cached: $AUDIOCLF_HOME/cache/features, else ~/.cache/audioclf/cache/features."""
    root = Path(os.environ.get("AUDIOCLF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audioclf")
    return root.expanduser() / "cache" / "features"


def _fingerprint(bundle: ModelBundle, dataset, window: float, crop: str) -> str:
    """A key for one model, window and set of clips: the encoder's weights, the settings, and each clip's
    path with size and modification time (or its bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(bundle.model.state_dict().items()):
        if not name.startswith(("projector", "classifier", "layer_weights")):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
    digest.update(json.dumps([window, crop, bundle.sampling_rate, bundle.model_type]).encode())
    for audio in dataset.with_format(None)["audio"]:
        path = audio.get("path")
        if audio.get("bytes"):
            digest.update(hashlib.sha256(audio["bytes"]).digest())
        elif path:
            stat = Path(path).stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def layer_means(bundle: ModelBundle, featurizer: BatchFeaturizer, clips_dataset, batch_size: int = 16,
                progress: bool = True) -> np.ndarray:
    """(n_clips, n_layers + 1, hidden) float32: the mean over time of every hidden state, embeddings first.
    `clips_dataset` yields `samples` (a ClipTransform applied)."""
    step = batch_size if bundle.model_type == "whisper" else 1
    model = bundle.model.eval()
    rows = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(clips_dataset), step), desc="encoding", unit="batch", disable=not progress):
            outputs = model(**featurizer(clips_dataset[start : start + step]["samples"]), output_hidden_states=True)
            rows.append(torch.stack(outputs.hidden_states, dim=1).mean(dim=2).numpy())
    return np.concatenate(rows).astype(np.float32)


def feature_cache_path(bundle: ModelBundle, dataset, window: float, crop: str) -> Path:
    """Where layer_means of this model, window, crop and audio are cached (whether or not they are yet)."""
    return cache_dir() / f"{_fingerprint(bundle, dataset, window, crop)}.npy"


def write_features(path: Path, features: np.ndarray) -> None:
    """Store features in the cache whole or not at all: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with open(partial, "wb") as f:
        np.save(f, features)
    os.replace(partial, path)


def head_logits(model, features: torch.Tensor) -> torch.Tensor:
    """The classification head of a `use_weighted_layer_sum` model applied to per-layer means."""
    weights = torch.softmax(model.layer_weights, dim=-1)
    pooled = (features * weights.view(1, -1, 1)).sum(dim=1)
    return model.classifier(model.projector(pooled))


def train_head(model, train_features: np.ndarray, train_labels: np.ndarray, eval_features: np.ndarray,
               eval_labels: np.ndarray, seed: int) -> dict:
    """Full-batch AdamW on the head's parameters with early stopping on evaluation accuracy; the best head
    is kept in `model`. Returns {"steps", "best_step", "train_accuracy", "eval_accuracy"}."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(train_features), torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    ex, ey = torch.from_numpy(eval_features), torch.from_numpy(np.asarray(eval_labels, dtype=np.int64))
    head = [model.layer_weights, *model.projector.parameters(), *model.classifier.parameters()]
    optimizer = torch.optim.AdamW(head, lr=PROBE_LEARNING_RATE, weight_decay=PROBE_WEIGHT_DECAY)
    best = (-1.0, float("inf"), 0, None)  # accuracy, loss, step, state
    checks_without_gain = 0
    step = 0
    for step in range(1, PROBE_MAX_STEPS + 1):
        loss = torch.nn.functional.cross_entropy(head_logits(model, x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % PROBE_EVAL_EVERY:
            continue
        with torch.no_grad():
            logits = head_logits(model, ex)
            accuracy = float((logits.argmax(-1) == ey).float().mean())
            eval_loss = float(torch.nn.functional.cross_entropy(logits, ey))
        if (accuracy, -eval_loss) > (best[0], -best[1]):
            state = {k: v.detach().clone() for k, v in model.state_dict().items()
                     if k.startswith(("projector", "classifier", "layer_weights"))}
            best, checks_without_gain = (accuracy, eval_loss, step, state), 0
        else:
            checks_without_gain += 1
            if checks_without_gain >= PROBE_PATIENCE:
                break
    model.load_state_dict(best[3], strict=False)
    with torch.no_grad():
        train_accuracy = float((head_logits(model, x).argmax(-1) == y).float().mean())
    return {"steps": step, "best_step": best[2], "train_accuracy": train_accuracy, "eval_accuracy": best[0]}


def accuracy_and_loss(model, features: np.ndarray, labels) -> dict:
    with torch.no_grad():
        logits = head_logits(model, torch.from_numpy(features))
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        return {"accuracy": float((logits.argmax(-1) == y).float().mean()),
                "loss": float(torch.nn.functional.cross_entropy(logits, y))}
