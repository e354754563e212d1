"""cli_options and the commands built with it: every field of DataSpec, ModelOptions, TrainOptions and ServeSettings
is exactly one flag of its commands, with the field's help; `--help` shows the defaults; a value given on the command
line reaches the resolved options, over a --config file, which wins over the preset; `train --nproc` re-launches with
the flags given and only those; and a value the command line cannot parse is a one-line error."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
import typer
import typer.main
import yaml
from typer.testing import CliRunner

import audioclf.config
from audioclf.cli import _given_arguments, app
from audioclf.cli_options import config_options
from audioclf.config import (SEED_PRESET, DataSpec, InferOptions, ModelOptions, ServeSettings, TrainOptions,
                             resolve_options, resolve_run)
from audioclf.errors import ConfigError
from audioclf.testing import make_folder_dataset

runner = CliRunner()
WIDE = {"COLUMNS": "400"}  # one line per option in --help
# command -> the option groups it takes, the fields it leaves out, and its own parameters
COMMANDS = {
    "train": ((DataSpec, ModelOptions, TrainOptions), (),
              {"output", "config", "overwrite", "resume", "push_to_hub", "hub_model_id", "quiet"}),
    "serve": ((ServeSettings,), (), {"model_dir"}),
    "evaluate": ((DataSpec,), ("language",), {"model_dir", "split", "as_json", "report_dir", "update_card", "quiet"}),
    # inspecting splits nothing; the language only warns at training
    "data inspect": ((DataSpec,), ("data", "test_size", "seed", "language"), {"source", "as_json"}),
    "predict": ((InferOptions,), (), {"model_dir", "files", "as_json", "csv_out", "input_", "audio_column", "output",
                                      "output_format", "overwrite", "use_ray", "ray_address", "concurrency", "quiet"}),
}
FLAGS = {"cors_origins": "--cors-origin"}  # one origin per flag, repeated
SEED_HELP = "Random seed for the split, the head, crops and data order."  # train's one --seed feeds both groups


def _command(name: str):
    command = typer.main.get_command(app)
    for part in name.split():
        command = command.commands[part]
    return command


def _fields(name: str) -> dict[str, dataclasses.Field]:
    groups, excluded, _ = COMMANDS[name]
    found: dict[str, dataclasses.Field] = {}
    for group in groups:
        found.update({f.name: f for f in dataclasses.fields(group) if f.name not in excluded and f.name not in found})
    return found


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


@pytest.mark.parametrize("name", COMMANDS)
def test_every_field_is_one_flag_with_its_help(name):
    params = {param.name: param for param in _command(name).params}
    fields = _fields(name)

    assert set(params) == set(fields) | COMMANDS[name][2]  # every field, none twice, nothing else
    declared = [opt for param in params.values() for opt in (*param.opts, *param.secondary_opts)]
    assert len(declared) == len(set(declared))
    for field_name, f in fields.items():
        param = params[field_name]
        assert param.opts[0] == _flag(field_name)
        if name == "train" and field_name == "seed":
            assert param.help == SEED_HELP
        elif name == "train" and field_name in SEED_PRESET and SEED_PRESET[field_name] != f.default:
            assert param.help.startswith(f.metadata["help"] + " (seed preset: "), field_name
        else:
            assert param.help == f.metadata["help"], field_name


def _shown(f: dataclasses.Field, value) -> str:
    flag = f.name.replace("_", "-")
    return (flag if value else f"no-{flag}") if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_default(name):
    result = runner.invoke(app, [*name.split(), "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.output.splitlines():
        found = re.match(r"[│\s*]*(--[a-z-]+)", line)
        if found:
            rows[found.group(1)] = line

    for f in _fields(name).values():
        row = rows[_flag(f.name)]
        if f.default not in (None, (), dataclasses.MISSING):
            assert f"[default: {_shown(f, f.default)}]" in row, row
        if name == "train" and f.name in SEED_PRESET and SEED_PRESET[f.name] != f.default:
            assert f"(seed preset: {'none' if SEED_PRESET[f.name] is None else _shown(f, SEED_PRESET[f.name])})" in row
    if name == "train":
        assert "[default: 0.0001]" in rows["--learning-rate"] and "(seed preset: 3e-05)" in rows["--learning-rate"]


def test_train_help_defaults_are_the_default_presets_values():
    assert resolve_options("default", {}) == TrainOptions()


# Every train flag with a value of its type, none of them the default; `--lr` is learning_rate's short alias.
EVERY_TRAIN_FLAG = {
    "data": "clips", "audio_column": "file", "label_column": "intent", "group_column": "speaker",
    "data_config": "en-US", "language": "fr", "data_split": "train", "test_size": 0.3, "seed": 7, "strict": True,
    "model": "some/model", "model_config": "tiny-wav2vec2", "weighted_layer_sum": False,
    "mode": "probe", "preset": "seed", "max_seconds": 2.5, "train_crop": "center", "eval_crop": "center",
    "learning_rate": 0.002, "head_learning_rate": 0.01, "batch_size": 3, "eval_batch_size": 5,
    "gradient_accumulation_steps": 2, "epochs": 2.5, "warmup_ratio": 0.2, "weight_decay": 0.05, "logging_steps": 3,
    "early_stopping_patience": 2, "freeze_front_end": False, "freeze_layers": 1, "speed_perturbation": 0.05,
    "spec_augment": 0.3, "noise_share": 0.5, "noise_min_snr_db": 3.0, "noise_max_snr_db": 20.0, "noise_folder": "noise",
    "gain_db": 6.0, "time_shift_seconds": 0.2, "mixup": 0.3, "probe_init": False, "layer_decay": 0.8, "class_weights": True, "validation_size": 0.2,
    "validation_min_clips": 2, "threads": 1, "nproc": 2,
}


def _arguments(values: dict) -> list[str]:
    arguments = []
    for name, value in values.items():
        flag = "--lr" if name == "learning_rate" else _flag(name)
        if isinstance(value, bool):
            arguments.append(flag if value else "--no-" + flag[2:])
        else:
            arguments += [flag, str(value)]
    return arguments


def test_every_train_flag_reaches_the_run_options(monkeypatch, tmp_path):
    given = []

    def stop(values):  # before any data, model or process is touched
        given.append(values)
        raise ConfigError("resolved")

    monkeypatch.setattr(audioclf.config, "resolve_run", stop)
    result = runner.invoke(app, ["train", *_arguments(EVERY_TRAIN_FLAG), "--output", str(tmp_path / "m")])

    assert result.exit_code == 1 and result.stderr.strip() == "error: resolved", result.output
    assert set(given[0]) == set(_fields("train"))  # every field is wired
    assert given[0] == EVERY_TRAIN_FLAG and all(type(given[0][k]) is type(v) for k, v in EVERY_TRAIN_FLAG.items())
    run = resolve_run(given[0])
    assert (run.data.seed, run.train.seed, run.data.strict) == (7, 7, True)  # one --seed feeds split and training
    assert (run.train.learning_rate, run.train.probe_init, run.model.weighted_layer_sum) == (0.002, False, False)


def test_flags_win_over_the_config_file_which_wins_over_the_preset(tmp_path):
    data = make_folder_dataset(tmp_path / "tones", clips_per_label=6, seconds=0.5, sampling_rate=8000)
    config_file = tmp_path / "options.yaml"
    config_file.write_text(yaml.safe_dump({
        "data": str(data), "model_config": "tiny-wav2vec2", "epochs": 1, "threads": 1,
        "weight_decay": 0.05, "batch_size": 4,  # the preset says 0.01 and 8; the flag below says 6
    }))
    output = tmp_path / "model"

    result = runner.invoke(app, ["train", "--config", str(config_file), "--output", str(output), "--batch-size", "6",
                                 "--spec-augment", "0.3", "--no-probe-init", "-q"])

    assert result.exit_code == 0, result.output
    written = json.loads((output / "train_config.json").read_text())["train"]
    assert (written["spec_augment"], written["probe_init"], written["batch_size"]) == (0.3, False, 6)  # flags
    assert (written["weight_decay"], written["epochs"]) == (0.05, 1)  # the file, over the preset
    assert (written["learning_rate"], written["warmup_ratio"]) == (1e-4, 0.1)  # the preset: given nowhere


def test_nproc_relaunches_with_the_flags_given_and_only_those():
    command = _command("train")
    args = ["--data", "clips", "--lr", "0.002", "--no-probe-init", "--nproc", "2", "--output", "m", "-q",
            "--seed", "3", "--config", "options.yaml"]
    ctx = command.make_context("train", list(args))

    again = _given_arguments(ctx, drop="nproc")

    assert sorted(again) == sorted(["--data", "clips", "--learning-rate", "0.002", "--no-probe-init", "--output", "m",
                                    "--quiet", "--seed", "3", "--config", "options.yaml"])
    relaunched = command.make_context("train", again)
    for param in command.params:
        source = relaunched.get_parameter_source(param.name).name
        assert source == ("DEFAULT" if param.name == "nproc" else ctx.get_parameter_source(param.name).name)
        assert relaunched.params[param.name] == ctx.params[param.name] or param.name == "nproc"


@pytest.mark.parametrize("args, fragments", [
    (["train", "--epochs", "four"], ["--epochs"]),
    (["serve", "model", "--port", "eighty"], ["--port"]),
    (["evaluate", "model"], ["--data"]),
    (["data", "inspect", "clips", "--test-size", "0.3"], ["--test-size"]),  # inspect splits nothing
], ids=["train", "serve", "evaluate-missing", "inspect-no-such-option"])
def test_a_command_line_that_does_not_parse_is_one_line(args, fragments):
    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments)


def test_serve_takes_an_empty_api_key_variable_for_no_key(monkeypatch, tmp_path):
    import audioclf.serve

    calls = []
    monkeypatch.setattr(audioclf.serve, "serve", lambda model_dir, settings: calls.append(settings))
    result = runner.invoke(app, ["serve", str(tmp_path), "--cors-origin", "http://a.test"], env={"AUDIOCLF_API_KEY": ""})

    assert result.exit_code == 0, result.output
    assert calls == [ServeSettings(api_key=None, cors_origins=("http://a.test",))]


def test_help_loads_neither_the_server_nor_the_model_libraries():
    code = ("import sys\nfrom audioclf.cli import main\nsys.argv = ['audioclf', 'serve', '--help']\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nprint([m for m in ('fastapi', 'torch', 'transformers') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert "--max-batch" in done.stdout and done.stdout.splitlines()[-1] == "[]"


# --- the decorator on its own ---------------------------------------------------------------------


@dataclasses.dataclass
class _Options:
    name: str = dataclasses.field(metadata={"help": "Required: no default."})
    count: int | None = dataclasses.field(default=None, metadata={"help": "Optional int."})
    tags: tuple[str, ...] = dataclasses.field(default=("a",), metadata={"help": "Repeatable."})
    loud: bool = dataclasses.field(default=False, metadata={"help": "A switch."})


def _app(**kwargs) -> tuple[typer.Typer, list]:
    seen = []
    small = typer.Typer()

    @small.command()
    @config_options(_Options, into="options", **kwargs)
    def main(verbose: bool = typer.Option(False, "--verbose"), *, options: dict) -> None:
        seen.append((verbose, options))

    return small, seen


def test_values_are_passed_as_one_dict_of_the_fields_types():
    small, seen = _app()
    assert runner.invoke(small, ["--name", "x", "--count", "3", "--tags", "b", "--tags", "c", "--loud"]).exit_code == 0
    assert runner.invoke(small, ["--name", "y"]).exit_code == 0
    assert runner.invoke(small, []).exit_code == 2  # --name is required

    assert seen[0] == (False, {"name": "x", "count": 3, "tags": ("b", "c"), "loud": True})
    assert seen[1] == (False, {"name": "y", "count": None, "tags": ("a",), "loud": False})
    assert _Options(**seen[0][1]) == _Options("x", 3, ("b", "c"), True)


def test_given_only_passes_only_what_the_command_line_gave():
    small, seen = _app(given_only=True)
    assert runner.invoke(small, ["--count", "3", "--no-loud"]).exit_code == 0
    assert runner.invoke(small, []).exit_code == 0  # nothing required: a file or preset may fill it in

    assert seen == [(False, {"count": 3, "loud": False}), (False, {})]


def test_options_for_fields_that_do_not_exist_are_refused():
    with pytest.raises(TypeError, match="no field.*colour"):
        _app(flags={"colour": ("--color",)})


def test_predict_segments_flag_keeps_its_old_name_as_an_alias():
    (param,) = [p for p in _command("predict").params if p.name == "segments"]
    assert param.opts == ["--segments", "--timeline"] and param.secondary_opts == ["--no-segments"]


@pytest.mark.parametrize("values, message", [
    ({"top_k": 0}, "--top-k 0: must be 1 or more"), ({"batch_size": 0}, "--batch-size 0: must be 1 or more"),
    ({"threads": 0}, "--threads 0: must be 1 or more"), ({"window_seconds": float("nan")}, "--window-seconds nan"),
    ({"hop_seconds": -1.0}, "--hop-seconds -1: must be positive"), ({"backend": "tf"}, "--backend 'tf': must be one of"),
])
def test_infer_options_refuse_nonsense_before_any_work(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        InferOptions(**values)
    result = runner.invoke(app, ["predict", "no-such-model", "clip.wav", f"--{next(iter(values)).replace('_', '-')}",
                                 str(next(iter(values.values())))])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: " + message) and len(result.stderr.strip().splitlines()) == 1


def test_predict_help_names_the_ray_extra_as_written():
    # rich's markup once took `[ray]` for a style tag and printed `pip install 'audioclf'`
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "250"})

    assert result.exit_code == 0
    assert "(needs the ray extra: pip install 'audioclf[ray]')" in " ".join(result.stdout.split())


@pytest.mark.parametrize("command", [["evaluate"], ["predict"], ["export", "onnx"], ["serve"], ["push"]])
def test_a_missing_model_argument_is_named_as_the_help_names_it(command):
    result = runner.invoke(app, command)

    assert result.exit_code == 2
    assert result.stderr.startswith("error: Missing argument 'MODEL_DIR'.")
    assert "MODEL_DIR" in runner.invoke(app, [*command, "--help"], env={"COLUMNS": "250"}).stdout.split("Usage:")[1]
