"""The Python API that `import audioclf` exposes: `train`, `load_classifier` and `evaluate`, each the library
function the command line calls, taking options by the names the config dataclasses give them (those of the
flags: `epochs`, `learning_rate`, `group_column`, ...).

Light at import, as the package must be: everything heavy is imported inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path

from audioclf.logs import quiet_libraries


def train(data: str | os.PathLike, model: str | os.PathLike | None, output: str | os.PathLike, *,
          overwrite: bool = False, resume: bool = False, progress: bool = True, **options):
    """Train a classifier on `data` (a label folder, a manifest, a saved dataset, parquet or a Hub id) from `model`
    (a checkpoint directory or Hub id; None with `model_config=NAME` for an untrained one) and write the model
    directory `output`, as `audioclf train` does. `options` are DataSpec, ModelOptions and TrainOptions fields by
    name (`epochs=6`, `group_column="speaker"`, `preset="seed"`, ...), checked and coerced as a --config file's are.
    With `progress=False` it prints nothing. Returns the TrainResult (its `metrics` are metrics.json's)."""
    from audioclf.config import resolve_run
    from audioclf.train import train as run_training

    values = {"data": os.fspath(data), **options}
    if model is not None:
        values["model"] = os.fspath(model)
    run = resolve_run(values)
    with quiet_libraries(not progress):
        return run_training(run.data, run.model, run.train, Path(output), overwrite=overwrite, resume=resume,
                            progress=progress, echo=print if progress else _silent)


def load_classifier(model_dir: str | os.PathLike, **options):
    """Load a trained model directory (or Hub id) or an ONNX export once, for `classify`, `classify_batch`,
    `segments`, `embed` and `score`; `options` are InferOptions' loading fields (`batch_size`, `threads`,
    `backend`, `window_seconds`, `hop_seconds`). Returns an infer.Classifier."""
    from audioclf.infer import load_classifier as load

    return load(model_dir, **options)


def evaluate(model_dir: str | os.PathLike, data: str | os.PathLike, *, split: str | None = None,
             update_card: bool = False, progress: bool = True, **options):
    """Score the model in `model_dir` on `data`, as `audioclf evaluate` does: by default the training run's own
    held-out test clips when `data` is what it was trained on, else the source's test split, else every clip
    (`split` names one, or "all"). `options` are DataSpec fields (`label_column`, `group_column`, ...).
    With `update_card`, the model card shows the result. Returns the EvalReport (accuracy, macro_f1, per_class,
    confusion, misclassified, and every clip's scores)."""
    from audioclf.config import DataSpec
    from audioclf.evaluate import evaluate_model

    with quiet_libraries(not progress):
        return evaluate_model(model_dir, DataSpec(data=os.fspath(data), **options), split, progress=progress,
                              update_card=update_card)


def _silent(line: str) -> None:
    pass
