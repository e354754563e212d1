"""Probe training: the encoder stays frozen, so its per-layer outputs for a clip never change. One pass
stores, per clip, the mean over time of every hidden layer (cached on disk); then exactly the head that
transformers' classifiers have with `use_weighted_layer_sum=True` (softmax layer weights, projector,
classifier) is fitted to those numbers, in seconds. In a run over several processes, each encodes its share of
the clips and the main process gathers, caches and trains (see train._layer_means_across).

Exactness: pooling is a mean over all of a clip's frames and the head is linear before it, so
head(cached means) equals the saved model's logits whenever every clip is encoded alone (wav2vec2 family:
one clip per forward pass, no padding) or fills a fixed window (Whisper: padding frames are part of the
window and of the mean, in the cache and in the model alike).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audioclf import files
from audioclf.errors import ConfigError
from audioclf.features import BatchFeaturizer
from audioclf.model import ModelBundle

PROBE_STRENGTHS = (0.03, 0.3, 3.0)  # inverse L2 strengths (scikit-learn's C) tried for each layer mixture
OFF_LAYER_LOGIT = -30.0  # layer_weights of the layers a one-layer mixture leaves out: a softmax weight of about 1e-13
PROBE_MAX_ITERATIONS = 2000  # L-BFGS iterations per fit at most; the demo's take 30-60
ABSENT_LABEL_LOGIT = -1e4  # a label with no training clip is never predicted
FEATURE_CACHE = ("cache", "features")  # the folder of cached layer means, under audioclf's home


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
    """Where layer_means of this model, window, crop and audio are cached (whether or not they are yet), under
    files.home_folder(*FEATURE_CACHE)."""
    return files.home_folder(*FEATURE_CACHE) / f"{_fingerprint(bundle, dataset, window, crop)}.npy"


def write_features(path: Path, features: np.ndarray) -> None:
    """Store features in the cache whole or not at all: a reader never sees half a file."""
    with files.AtomicFile(path) as f:
        np.save(f, features)


def head_logits(model, features: torch.Tensor) -> torch.Tensor:
    """The classification head of a `use_weighted_layer_sum` model applied to per-layer means."""
    weights = torch.softmax(model.layer_weights, dim=-1)
    pooled = (features * weights.view(1, -1, 1)).sum(dim=1)
    return model.classifier(model.projector(pooled))


def train_head(model, train_features: np.ndarray, train_labels, eval_features: np.ndarray, eval_labels,
               seed: int) -> dict:
    """Fit the `use_weighted_layer_sum` head on cached layer means, choosing on the evaluation clips, and write the
    result into `model` exactly.

    The head is a multinomial logistic regression (scikit-learn: a convex fit, no learning rate or steps to tune)
    on standardized pooled means. First the layer mixture is chosen, each hidden layer alone or all layers weighted
    equally, at the middle L2 strength of PROBE_STRENGTHS; then the strength, for that mixture. Each choice goes to
    the best evaluation accuracy, ties to the lower evaluation loss. The chosen pair is then fitted again on the
    training and evaluation clips together: more voices to learn from. The head computes exactly that regression:
    layer_weights hold the mixture's log-weights, the projector's first rows the coefficients with the
    standardization folded in, and the classifier reads those rows.

    On the demo's unseen voices this reaches 0.85; training the three parts jointly by gradient descent reached 0.72,
    choosing without the final fit 0.80. Returns {"mixture", "strength", "candidates", "train_accuracy" (of the final
    fit, on the training and evaluation clips), "eval_accuracy" and "eval_loss" (of the chosen pair, measured before
    the final fit saw those clips)}.
    """
    n_labels, n_layers = model.config.num_labels, train_features.shape[1]
    check_head_fits(model)
    train_labels, eval_labels = np.asarray(train_labels, dtype=np.int64), np.asarray(eval_labels, dtype=np.int64)
    mixtures = {"all layers equally": np.zeros(n_layers)}
    for layer in range(n_layers):
        logits = np.full(n_layers, OFF_LAYER_LOGIT)
        logits[layer] = 0.0
        mixtures["embeddings" if layer == 0 else f"layer {layer}"] = logits
    pooled = {name: (_pool(train_features, logits), _pool(eval_features, logits)) for name, logits in mixtures.items()}

    def evaluated(name: str, strength: float) -> tuple[float, float]:
        train_pooled, eval_pooled = pooled[name]
        weight, bias = _fit_regression(train_pooled, train_labels, strength, n_labels, seed)
        return _scores(eval_pooled @ weight.T + bias, eval_labels)

    def best(scores: dict):
        return max(scores, key=lambda key: (scores[key][0], -scores[key][1]))

    middle = PROBE_STRENGTHS[len(PROBE_STRENGTHS) // 2]
    by_mixture = {name: evaluated(name, middle) for name in mixtures}
    name = best(by_mixture)
    by_strength = {middle: by_mixture[name], **{c: evaluated(name, c) for c in PROBE_STRENGTHS if c != middle}}
    strength = best(by_strength)

    features = np.concatenate(pooled[name])
    labels = np.concatenate([train_labels, eval_labels])
    weight, bias = _fit_regression(features, labels, strength, n_labels, seed)
    with torch.no_grad():
        model.layer_weights.copy_(torch.from_numpy(mixtures[name]))
        model.projector.weight.zero_()
        model.projector.bias.zero_()
        model.projector.weight[:n_labels] = torch.from_numpy(weight)
        model.projector.bias[:n_labels] = torch.from_numpy(bias)
        model.classifier.weight.zero_()
        model.classifier.weight[:, :n_labels] = torch.eye(n_labels)
        model.classifier.bias.zero_()
    train_accuracy = _scores(features @ weight.T + bias, labels)[0]
    eval_accuracy, eval_loss = by_strength[strength]
    return {"mixture": name, "strength": strength, "candidates": len(by_mixture) + len(by_strength) - 1,
            "train_accuracy": train_accuracy, "eval_accuracy": eval_accuracy, "eval_loss": eval_loss}


def check_head_fits(model) -> None:
    """train_head writes one logit per label into the projector's outputs: there must be enough of them."""
    n_labels, width = model.config.num_labels, model.projector.out_features
    if width < n_labels:
        raise ConfigError(f"probe mode: {n_labels} labels need a classifier_proj_size of at least {n_labels}, not {width}")


def _pool(features: np.ndarray, layer_logits: np.ndarray) -> np.ndarray:
    """The head's weighted layer sum of per-layer means: softmax(layer_logits) over the layers."""
    weights = np.exp(layer_logits - layer_logits.max())
    return np.einsum("nld,l->nd", features.astype(np.float64), weights / weights.sum())


def _fit_regression(pooled: np.ndarray, labels: np.ndarray, strength: float, n_labels: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A logistic regression on the standardized pooled features, as one affine map of the pooled features to
    every label's logit: (weight, bias)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = pooled.mean(axis=0), pooled.std(axis=0)
    scale[scale == 0] = 1.0
    regression = LogisticRegression(C=strength, max_iter=PROBE_MAX_ITERATIONS, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fit stopped at max_iter is still a fit; validation judges it
        regression.fit((pooled - mean) / scale, labels)
    return _folded(regression, mean, scale, n_labels)


def _folded(regression, mean: np.ndarray, scale: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted regression on (x - mean) / scale as one affine map of x to every label's logit: (weight, bias)."""
    coef, intercept = regression.coef_, regression.intercept_
    if len(regression.classes_) == 2:  # scikit-learn keeps one row for two classes: the second's logit over the first's
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weight = np.zeros((n_labels, mean.shape[0]))
    bias = np.full(n_labels, ABSENT_LABEL_LOGIT)
    weight[regression.classes_] = coef / scale
    bias[regression.classes_] = intercept - (coef / scale) @ mean
    return weight, bias


def _scores(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of logits against labels."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(np.mean(logits.argmax(axis=1) == labels)), float(-log_probabilities[np.arange(len(labels)), labels].mean())


def accuracy_and_loss(model, features: np.ndarray, labels) -> dict:
    """The model's head on cached layer means, scored against labels."""
    with torch.no_grad():
        logits = head_logits(model, torch.from_numpy(features)).double().numpy()
    accuracy, loss = _scores(logits, np.asarray(labels, dtype=np.int64))
    return {"accuracy": accuracy, "loss": loss}
