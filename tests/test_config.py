"""Every option of every config dataclass is checked when the dataclass is made, so the CLI, --config files and the
Python API refuse the same values with the same one-line message, before any work."""

import dataclasses
import math

import pytest

from audioclf.config import (DataSpec, InferOptions, ModelOptions, ServeSettings, TrainOptions, read_config_file,
                             resolve_options, resolve_run)
from audioclf.errors import ConfigError

NAN, INF = math.nan, math.inf
GROUPS = (DataSpec, ModelOptions, TrainOptions, InferOptions, ServeSettings)

# (group, field): (values refused, values accepted, what the message says is valid). Every int and float field of
# every group is here (test_every_numeric_field_is_in_the_table).
NUMERIC = {
    (DataSpec, "test_size"): ([0, 1, -0.5, NAN, INF], [0.01, 0.99], "in (0, 1) (a fraction of the clips)"),
    (DataSpec, "seed"): ([-1, 2**32, 1.5], [0, 2**32 - 1], "from 0 to 4294967295"),
    (TrainOptions, "max_seconds"): ([0, -1, NAN, INF], [0.5, None], "positive (seconds)"),
    (TrainOptions, "learning_rate"): ([0, -1e-4, 2, NAN, INF], [1e-6, 1], "positive and at most 1"),
    (TrainOptions, "head_learning_rate"): ([0, 1.5, NAN], [None, 1e-2], "positive and at most 1"),
    (TrainOptions, "batch_size"): ([0, -8, 2.5], [1], "1 or more"),
    (TrainOptions, "eval_batch_size"): ([0], [1], "1 or more"),
    (TrainOptions, "gradient_accumulation_steps"): ([0, -1], [1], "1 or more"),
    (TrainOptions, "epochs"): ([0, -1, NAN, INF], [0.5, 1], "positive"),
    (TrainOptions, "warmup_ratio"): ([-0.1, 1, NAN], [0, 0.99], "in [0, 1) (a share of the updates)"),
    (TrainOptions, "weight_decay"): ([-0.01, NAN, INF], [0, 0.5], "0 or more"),
    (TrainOptions, "logging_steps"): ([0], [1], "1 or more"),
    (TrainOptions, "early_stopping_patience"): ([-1, 1.5], [None, 0], "0 or more"),
    (TrainOptions, "freeze_layers"): ([-1], [0, 3], "0 or more"),
    (TrainOptions, "validation_min_clips"): ([0, -1], [1, 3], "1 or more"),
    (TrainOptions, "layer_decay"): ([0, -0.5, 1.5, NAN], [0.5, 1], "positive and at most 1"),
    (TrainOptions, "speed_perturbation"): ([-0.1, 0.5, NAN], [0, 0.49], "in [0, 0.5) (a fraction of the speed)"),
    (TrainOptions, "spec_augment"): ([-0.1, 1, NAN], [0, 0.99], "in [0, 1) (a share of the frames)"),
    (TrainOptions, "noise_share"): ([-0.1, 1.01, NAN], [0, 1], "from 0 to 1 (a share of the training clips)"),
    (TrainOptions, "noise_min_snr_db"): ([-21, 81, NAN, INF], [-20, 30], "from -20 to 80 (dB)"),
    (TrainOptions, "noise_max_snr_db"): ([-21, 81, NAN], [30, 80], "from -20 to 80 (dB)"),
    (TrainOptions, "gain_db"): ([-1, 41, NAN], [0, 40], "from 0 to 40 (dB)"),
    (TrainOptions, "time_shift_seconds"): ([-0.1, 11, INF], [0, 10], "from 0 to 10 (seconds)"),
    (TrainOptions, "mixup"): ([-0.1, 11, NAN], [0, 0.4], "from 0 to 10 (the Beta distribution's alpha)"),
    (TrainOptions, "validation_size"): ([-0.1, 1, NAN], [0, 0.5], "in [0, 1) (a share of the training clips)"),
    (TrainOptions, "seed"): ([-1, 2**32], [0], "from 0 to 4294967295"),
    (TrainOptions, "threads"): ([0, -2], [None, 1], "1 or more"),
    (TrainOptions, "nproc"): ([0], [1, 4], "1 or more (processes on this machine)"),
    (InferOptions, "top_k"): ([0, -1], [1], "1 or more"),
    (InferOptions, "window_seconds"): ([0, -1, NAN, INF], [None, 0.5], "positive"),
    (InferOptions, "hop_seconds"): ([0, NAN], [None, 0.25], "positive"),
    (InferOptions, "batch_size"): ([0], [1], "1 or more"),
    (InferOptions, "threads"): ([0], [None, 1], "1 or more"),
    (ServeSettings, "port"): ([0, 65536, -80], [1, 65535], "from 1 to 65535"),
    (ServeSettings, "max_batch"): ([0], [1], "1 or more"),
    (ServeSettings, "max_wait_ms"): ([-1, NAN, INF], [0, 2.5], "0 or more"),
    (ServeSettings, "max_queue"): ([0], [1], "1 or more"),
    (ServeSettings, "max_upload_mb"): ([0, -1, NAN, INF], [0.01], "positive"),
    (ServeSettings, "max_audio_seconds"): ([0, -5, INF], [0.5], "positive"),
    (ServeSettings, "top_k"): ([0], [1], "1 or more"),
    (ServeSettings, "header_timeout_seconds"): ([0, NAN, INF], [0.5], "positive"),
    (ServeSettings, "body_timeout_seconds"): ([0, -1], [1], "positive"),
    (ServeSettings, "keep_alive_seconds"): ([0, NAN], [0.1], "positive"),
    (ServeSettings, "max_connections"): ([0], [1], "1 or more"),
    (ServeSettings, "max_header_kb"): ([0], [1], "1 or more"),
}
CHOICES = {
    (TrainOptions, "mode"): ["best", "probe", "finetune"],
    (TrainOptions, "preset"): ["default", "seed"],
    (TrainOptions, "train_crop"): ["random", "center", "start"],
    (TrainOptions, "eval_crop"): ["random", "center", "start"],
    (InferOptions, "backend"): ["torch", "onnx"],
}


def _make(group, name, value):
    required = {"data": "clips"} if group is DataSpec else {}
    return group(**{**required, name: value})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _whole(group, name) -> bool:
    return next(str(f.type).startswith("int") for f in dataclasses.fields(group) if f.name == name)


def _refusal(group, name: str, value, valid: str) -> str:
    flag = _flag(name)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{flag} {value}: not a finite number; must be {valid}"
    if isinstance(value, float) and _whole(group, name):
        return f"{flag} {value!r}: not a whole number; must be {valid}"
    shown = int(value) if float(value).is_integer() else value
    return f"{flag} {shown}: must be {valid}"


def test_every_numeric_field_is_in_the_table():
    numeric = {(group, f.name) for group in GROUPS for f in dataclasses.fields(group)
               if str(f.type).split("|")[0].strip() in ("int", "float")}
    assert numeric == set(NUMERIC)
    choices = {(group, f.name) for group in GROUPS for f in dataclasses.fields(group) if "choices" in f.metadata}
    assert choices == set(CHOICES)


@pytest.mark.parametrize("group, name, value", [(g, n, v) for (g, n), (bad, _, _) in NUMERIC.items() for v in bad],
                         ids=lambda x: getattr(x, "__name__", repr(x)))
def test_a_refused_number_names_the_flag_the_value_and_what_is_valid(group, name, value):
    valid = NUMERIC[group, name][2]
    with pytest.raises(ConfigError) as refused:
        _make(group, name, value)
    assert str(refused.value) == _refusal(group, name, value, valid)
    if group is TrainOptions and name != "preset":  # the door the CLI and --config files go through
        with pytest.raises(ConfigError) as resolved:
            resolve_options("default", {name: value})
        assert str(resolved.value) == str(refused.value)


@pytest.mark.parametrize("group, name, value", [(g, n, v) for (g, n), (_, good, _) in NUMERIC.items() for v in good],
                         ids=lambda x: getattr(x, "__name__", repr(x)))
def test_the_edges_of_every_range_are_accepted(group, name, value):
    assert getattr(_make(group, name, value), name) == value


@pytest.mark.parametrize("group, name", list(CHOICES), ids=lambda x: getattr(x, "__name__", x))
def test_a_choice_outside_its_list_names_the_list(group, name):
    for value in CHOICES[group, name]:
        assert getattr(_make(group, name, value), name) == value
    with pytest.raises(ConfigError) as refused:
        _make(group, name, "other")
    assert str(refused.value) == f"{_flag(name)} 'other': must be one of {', '.join(CHOICES[group, name])}"


@pytest.mark.parametrize("group, name, value, message", [
    (TrainOptions, "batch_size", True, "--batch-size True: not a whole number; must be 1 or more"),
    (TrainOptions, "epochs", "four", "--epochs 'four': not a number; must be positive"),
    (TrainOptions, "epochs", None, "--epochs: a value is required"),
    (TrainOptions, "probe_init", "yes", "--probe-init 'yes': must be true or false"),
    (DataSpec, "label_column", " ", "--label-column ' ': must be a non-empty text"),
    (ModelOptions, "model", "", "--model '': must be a non-empty text"),
    (ServeSettings, "host", "", "--host '': must be a non-empty text"),
    (ServeSettings, "cors_origins", ("",), "--cors-origin ('',): must be non-empty texts"),
    (ServeSettings, "cors_origins", ("example.org",), "--cors-origin 'example.org': must be * or an origin, a scheme "
                                                      "and host such as https://example.org or http://localhost:8080, "
                                                      "with no path"),
    (InferOptions, "hop_seconds", 3.0, "--hop-seconds 3: must be positive and at most the window (1 s)"),
])
def test_types_and_texts_are_checked_too(group, name, value, message):
    extra = {"window_seconds": 1.0} if name == "hop_seconds" else {}
    with pytest.raises(ConfigError) as refused:
        group(**({"data": "clips"} if group is DataSpec else {}), **extra, **{name: value})
    assert str(refused.value) == message


def test_a_config_file_value_is_checked_like_a_flag(tmp_path):
    config = tmp_path / "opts.yaml"
    config.write_text("data: clips\ntrain:\n  learning_rate: nan\n")
    with pytest.raises(ConfigError) as refused:
        resolve_run(read_config_file(config))
    assert str(refused.value) == "--learning-rate nan: not a finite number; must be positive and at most 1"


def test_full_is_finetunes_earlier_name():
    """`--mode full` (and a train_config.json of a run from before the best mode) means fine-tuning alone."""
    assert TrainOptions(mode="full").mode == "finetune"
    assert TrainOptions().mode == "best"
    assert resolve_options("seed", {}).mode == "finetune"  # the guide's recipe fine-tunes, keeps no probe


@pytest.mark.parametrize("text, code", [("fr-FR", "fr"), ("fr", "fr"), ("es_ES", "es"), ("French", "fr"),
                                        ("en-US", "en"), ("zh-CN", "zh"), ("all", None), ("clean", None),
                                        ("default", None), ("fr-FR-x-long", None)])
def test_language_code_reads_tags_and_names(text, code):
    from audioclf.config import language_code

    assert language_code(text) == code


def test_an_unknown_language_is_refused_naming_the_flag():
    assert DataSpec(data="d", language="fr-FR").language == "fr-FR"
    with pytest.raises(ConfigError, match=r"^--language 'klingon': not a language code or name Whisper knows"):
        DataSpec(data="d", language="klingon")
