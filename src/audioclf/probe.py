"""Linear probes: the frozen encoder's per-layer means, and the one head fit on them.

While the encoder is frozen, its per-layer outputs for a clip never change. One pass stores, per clip, the mean
over time of every hidden layer (cached on disk); a logistic regression on those numbers is then chosen on the
evaluation clips and written into the model's head exactly, in seconds. Both ways of training use it: `--mode
probe` (the head is all that is trained) and the default preset's `--probe-init` (the head that fine-tuning starts
from). In a run over several processes, each encodes its share of the clips, and the main process gathers and
caches them, fits the head and hands it to the others.

The head is transformers' classifier head, of either kind: with `use_weighted_layer_sum=True`, softmax layer
weights, projector and classifier over every layer; without, projector and classifier over the encoder's last
hidden state, which layer_means gives as its last layer.

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
from audioclf.data import clip_samples
from audioclf.distributed import Processes
from audioclf.errors import ConfigError
from audioclf.features import BatchFeaturizer, ClipTransform
from audioclf.model import ModelBundle

PROBE_STRENGTHS = (0.03, 0.3, 3.0)  # inverse L2 strengths (scikit-learn's C) tried for each layer mixture
OFF_LAYER_LOGIT = -30.0  # layer_weights of the layers a one-layer mixture leaves out: a softmax weight of about 1e-13
CROSS_VALIDATION_FOLDS = 5  # at most; fewer where a label has fewer training clips
PROBE_MAX_ITERATIONS = 2000  # L-BFGS iterations per fit at most; the demo's take 30-60
ABSENT_LABEL_LOGIT = -1e4  # a label with no training clip is never predicted
FEATURE_CACHE = ("cache", "features")  # the folder of cached layer means, under audioclf's home
HEAD_PARAMETERS = ("projector", "classifier", "layer_weights")  # what a head fit writes, and what the cache key leaves out
EVAL_RIGHT = "eval_right"  # fit_head's per-clip answers on the evaluation clips, taken out before its report is kept


def _fingerprint(bundle: ModelBundle, dataset, window: float, crop: str) -> str:
    """A key for one model, window and set of clips: the encoder's weights, the settings, the kind of head (which
    decides what the last layer's mean is), and each clip's path with size and modification time (or its bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(bundle.model.state_dict().items()):
        if not name.startswith(HEAD_PARAMETERS):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
    digest.update(json.dumps([window, crop, bundle.sampling_rate, bundle.model_type, _weighted(bundle.model)]).encode())
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
    """(n_clips, n_layers + 1, hidden) float32: the mean over time of every hidden state, embeddings first. In a
    model without weighted layer sum, the last is the mean of what its projector is given, the encoder's
    last_hidden_state; in most models that is hidden_states[-1], but stable-layer-norm wav2vec2 models (large,
    XLS-R) put a final layer norm after it. `clips_dataset` yields `samples` (a ClipTransform applied). Whisper
    windows are all the same length and batch freely; other models go one clip at a time, so no padding or mask
    changes the mean."""
    step = batch_size if bundle.model_type == "whisper" else 1
    model, was_training = bundle.model, bundle.model.training
    given: list[torch.Tensor] = []
    hook = None
    if hasattr(model, "projector") and not _weighted(model):
        hook = model.projector.register_forward_hook(lambda module, inputs, output: given.append(inputs[0].mean(dim=1)))
    model.eval()
    rows = []
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(clips_dataset), step), desc="encoding", unit="batch", disable=not progress):
                outputs = model(**featurizer(clips_dataset[start : start + step]["samples"]), output_hidden_states=True)
                means = torch.stack(outputs.hidden_states, dim=1).mean(dim=2)
                if hook is not None:
                    means[:, -1] = given.pop()
                rows.append(means.numpy())
    finally:
        model.train(was_training)
        if hook is not None:
            hook.remove()
    return np.concatenate(rows).astype(np.float32)


def split_layer_means(bundle: ModelBundle, featurizer: BatchFeaturizer, split, window: float, crop: str, seed: int,
                      processes: Processes, progress: bool = True) -> tuple[np.ndarray | None, bool]:
    """layer_means of a split's clips cut to the window by `crop`, from the main process's disk cache when it has
    them; else each process encodes its share of the clips and the main process gathers and caches them. Returns
    the features (in the main process; None in the others) and whether they came from the cache."""
    path = feature_cache_path(bundle, split, window, crop) if processes.is_main else None
    if processes.broadcast(path is not None and path.is_file()):
        return (np.load(path) if processes.is_main else None), True
    transform = ClipTransform(clip_samples, bundle.sampling_rate, window, crop, seed)
    features = processes.gather_rows(len(split), lambda rows: layer_means(
        bundle, featurizer, split.select(rows).with_transform(transform), progress=progress))
    if processes.is_main:
        write_features(path, features)
    return features, False


def feature_cache_path(bundle: ModelBundle, dataset, window: float, crop: str) -> Path:
    """Where layer_means of this model, window, crop and audio are cached (whether or not they are yet), under
    files.home_folder(*FEATURE_CACHE)."""
    return files.home_folder(*FEATURE_CACHE) / f"{_fingerprint(bundle, dataset, window, crop)}.npy"


def write_features(path: Path, features: np.ndarray) -> None:
    """Store features in the cache whole or not at all: a reader never sees half a file."""
    with files.AtomicFile(path) as f:
        np.save(f, features)


def head_logits(model, features: torch.Tensor) -> torch.Tensor:
    """The model's classification head applied to per-layer means (n_clips, n_layers + 1, hidden): to their
    weighted layer sum, or in a model without one, to the last layer's."""
    if _weighted(model):
        weights = torch.softmax(model.layer_weights, dim=-1)
        pooled = (features * weights.view(1, -1, 1)).sum(dim=1)
    else:
        pooled = features[:, -1]
    return model.classifier(model.projector(pooled))


def fit_head(model, train_features: np.ndarray | None, train_labels, eval_features: np.ndarray | None, eval_labels,
             seed: int, processes: Processes | None = None, *, refit_with_eval: bool, groups=None) -> dict:
    """Fit the model's head on layer means (from split_layer_means), choosing on the evaluation clips, and write the
    result into `model` exactly, in every process: the main process fits (the others pass None for the features)
    and hands the head to the others, so all of them go on from the same head.

    The head is a multinomial logistic regression (scikit-learn: a convex fit, no learning rate or steps to tune)
    on standardized pooled means. With layer weights, the layer mixture is chosen first, each hidden layer alone or
    all layers weighted equally, at the middle L2 strength of PROBE_STRENGTHS; without, the mixture is the last
    layer. Then the strength is chosen, for that mixture. Each choice goes to the best evaluation accuracy, ties to
    the lower evaluation loss. With `refit_with_eval` the chosen pair is then fitted again on the training and
    evaluation clips together, more voices to learn from: for a probe, whose evaluation figures are measured before
    that; not for a head that fine-tuning starts from, whose evaluation clips go on to judge every epoch.

    With no evaluation clips (`eval_labels` None), the choices are made by cross-validation on the training clips
    instead (cross_validation_folds; group-disjoint folds given `groups`), scored on every clip's out-of-fold
    logits, and the chosen pair is fitted on all of them.

    The head computes exactly that regression: layer_weights hold the mixture's log-weights, the projector's first
    rows the coefficients with the standardization folded in, and the classifier reads those rows alone (the
    projector's other rows keep their values, so that fine-tuning can still bring them in). Returns {"mixture",
    "strength", "candidates", "chosen_by" ("validation" or "N-fold cross-validation"), "train_accuracy" (of the
    final fit, on the clips it was fitted on), "eval_accuracy" and "eval_loss" (of the chosen pair, before any refit
    saw those clips), and EVAL_RIGHT: whether it got each evaluation clip right, in their order (for comparing
    with another model on the same clips; not for metrics.json)}.
    """
    processes = processes or Processes()
    fitted = None
    if processes.is_main:
        train_labels = np.asarray(train_labels, dtype=np.int64)
        if eval_labels is None:
            features, labels = train_features, train_labels
            folds = cross_validation_folds(labels, groups, seed)
            chosen_by, final_rows = f"{len(folds)}-fold cross-validation", np.arange(len(labels))
        else:
            features = np.concatenate([train_features, eval_features])
            labels = np.concatenate([train_labels, np.asarray(eval_labels, dtype=np.int64)])
            n_train = len(train_labels)
            folds = [(np.arange(n_train), np.arange(n_train, len(labels)))]
            chosen_by, final_rows = "validation", np.arange(len(labels) if refit_with_eval else n_train)
        report = {**_fit_and_write(model, features, labels, folds, final_rows, seed), "chosen_by": chosen_by}
        fitted = report, {name: value for name, value in model.state_dict().items() if name.startswith(HEAD_PARAMETERS)}
    report, head = processes.broadcast(fitted)
    if not processes.is_main:
        model.load_state_dict(head, strict=False)
    return report


def cross_validation_folds(labels: np.ndarray, groups, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) of each fold: stratified by label, group-disjoint given `groups`, as many folds as
    the rarest label has clips (or groups) up to CROSS_VALIDATION_FOLDS, and at least 2."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    rarest = int(counts[counts > 0].min())
    if groups is not None:
        groups = np.asarray(groups)
        rarest = min(rarest, len(np.unique(groups)))
    n_folds = max(2, min(CROSS_VALIDATION_FOLDS, rarest))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a label with fewer clips than folds is missing from some of them: allowed
        if groups is None:
            splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed % 2**32)
            return list(splitter.split(np.zeros(len(labels)), labels))
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed % 2**32)
        return list(splitter.split(np.zeros(len(labels)), labels, groups))


def _fit_and_write(model, features: np.ndarray, labels: np.ndarray, folds: list, final_rows: np.ndarray,
                   seed: int) -> dict:
    """Choose the mixture and strength on `folds` (each (fit rows, held-out rows) of `features`), then fit the
    chosen pair on `final_rows` and write it into the head."""
    n_labels, n_layers = model.config.num_labels, features.shape[1]
    mixtures = _mixtures(n_layers) if _weighted(model) else {f"layer {n_layers - 1}": None}
    pooled = {name: _pool(features, logits) for name, logits in mixtures.items()}
    held_out = np.concatenate([rows for _, rows in folds])

    def evaluated(name: str, strength: float) -> tuple[float, float, np.ndarray]:
        """(accuracy, loss, each held-out clip right or wrong, in row order) of one pair."""
        logits = []
        for fit_rows, eval_rows in folds:
            weight, bias = _fit_regression(pooled[name][fit_rows], labels[fit_rows], strength, n_labels, seed)
            logits.append(pooled[name][eval_rows] @ weight.T + bias)
        logits = np.concatenate(logits)
        right = np.empty(len(held_out), dtype=bool)
        right[np.argsort(held_out)] = logits.argmax(axis=1) == labels[held_out]
        return (*_scores(logits, labels[held_out]), right)

    def best(scores: dict):
        return max(scores, key=lambda key: (scores[key][0], -scores[key][1]))

    middle = PROBE_STRENGTHS[len(PROBE_STRENGTHS) // 2]
    by_mixture = {name: evaluated(name, middle) for name in mixtures}
    name = best(by_mixture)
    by_strength = {middle: by_mixture[name], **{c: evaluated(name, c) for c in PROBE_STRENGTHS if c != middle}}
    strength = best(by_strength)

    final_features, final_labels = pooled[name][final_rows], labels[final_rows]
    weight, bias = _fit_regression(final_features, final_labels, strength, n_labels, seed)
    _write_head(model, mixtures[name], weight, bias)
    eval_accuracy, eval_loss, eval_right = by_strength[strength]
    return {"mixture": name, "strength": strength, "candidates": len(by_mixture) + len(by_strength) - 1,
            "train_accuracy": _scores(final_features @ weight.T + bias, final_labels)[0],
            "eval_accuracy": eval_accuracy, "eval_loss": eval_loss, EVAL_RIGHT: eval_right.tolist()}


def _write_head(model, layer_logits: np.ndarray | None, weight: np.ndarray, bias: np.ndarray) -> None:
    """Make the head compute `weight @ pooled + bias` over the mixture `layer_logits` (None: the last layer)."""
    n_labels = weight.shape[0]
    with torch.no_grad():
        if layer_logits is not None:
            model.layer_weights.copy_(torch.from_numpy(layer_logits))
        model.projector.weight[:n_labels] = torch.from_numpy(weight)
        model.projector.bias[:n_labels] = torch.from_numpy(bias)
        model.classifier.weight.zero_()
        model.classifier.weight[:, :n_labels] = torch.eye(n_labels)
        model.classifier.bias.zero_()


def check_head_fits(model, flag: str) -> None:
    """fit_head writes one logit per label into the projector's outputs: the model needs a projector with enough
    of them. `flag` is the option that asks for the fit. Checked before the encoding pass, not after it."""
    if not hasattr(model, "projector"):
        raise ConfigError(f"{flag}: the {model.config.model_type} classifier has no projector head to fit; "
                          "use a wav2vec2-family or Whisper model" + (", or --no-probe-init" if flag == "--probe-init" else ""))
    n_labels, width = model.config.num_labels, model.projector.out_features
    if width < n_labels:
        raise ConfigError(f"{flag}: {n_labels} labels need a classifier_proj_size of at least {n_labels}, not {width}")


def _weighted(model) -> bool:
    return bool(getattr(model.config, "use_weighted_layer_sum", False))


def _mixtures(n_layers: int) -> dict[str, np.ndarray]:
    """The layer mixtures a weighted-layer-sum head is fitted on, as layer_weights logits: all layers equally,
    then each alone."""
    mixtures = {"all layers equally": np.zeros(n_layers)}
    for layer in range(n_layers):
        logits = np.full(n_layers, OFF_LAYER_LOGIT)
        logits[layer] = 0.0
        mixtures["embeddings" if layer == 0 else f"layer {layer}"] = logits
    return mixtures


def _pool(features: np.ndarray, layer_logits: np.ndarray | None) -> np.ndarray:
    """The head's pooling of per-layer means: their weighted sum, softmax(layer_logits) over the layers, or (None)
    the last layer alone."""
    if layer_logits is None:
        return features[:, -1].astype(np.float64)
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

