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


# --- backbone -----------------------------------------------------------------------------------


# --- train / evaluate / predict / demo ----------------------------------------------------------


def main() -> None:
    app(prog_name="audioclf")


if __name__ == "__main__":
    sys.exit(main())
