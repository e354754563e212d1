"""Command-line options generated from the config dataclasses (audioclf.config), as transformers' HfArgumentParser
does: a field's name, type, default and help text are written once, on the field, and every command that takes
the field parses it and shows it the same way."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import types
import typing
from collections.abc import Callable, Mapping, Sequence

import typer

from audioclf.config import flag_of


def config_options(
    *classes: type,
    into: str,
    given_only: bool = False,
    panels: Sequence[str | None] = (),
    exclude: Sequence[str] = (),
    flags: Mapping[str, Sequence[str]] = {},
    extra: Mapping[str, Mapping[str, object]] = {},
    presets: Mapping[str, Mapping[str, object]] = {},
) -> Callable[[Callable], Callable]:
    """Decorate a typer command so that it has one option per field of `classes` (less `exclude`) and receives
    their values as one dict, the keyword argument `into`.

    A field `max_seconds: float | None` becomes `--max-seconds FLOAT`, a bool `--x/--no-x`, a `tuple[str, ...]` a
    repeatable option; its help is the field's `help` metadata and `--help` shows its default. A field without a
    default is a required option. A name in several classes is one option (the first class's). `panels` names a
    help section per class; `flags` replaces a field's `--field-name` (aliases included); `extra` adds or
    overrides typer.Option arguments; `presets` notes in the help each preset's value where it differs.

    With `given_only`, the dict holds only the options given on the command line (not their defaults), and no
    option is required, so that what is not given can still come from a config file or a preset."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        if into not in signature.parameters:
            raise TypeError(f"{command.__name__} has no parameter {into!r} to receive the options")
        named = {f.name for cls in classes for f in dataclasses.fields(cls)}
        unknown = sorted((set(flags) | set(extra) | set(exclude)) - named)
        if unknown:
            raise TypeError(f"{', '.join(c.__name__ for c in classes)} have no field(s) {', '.join(unknown)}")
        generated: dict[str, inspect.Parameter] = {}
        repeated: set[str] = set()
        for cls, panel in itertools.zip_longest(classes, panels[:len(classes)]):
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.name in exclude or f.name in generated:
                    continue
                annotation, default = hints[f.name], _default(f)
                if typing.get_origin(annotation) is tuple:  # typer reads tuple[X, ...] as a fixed-size tuple
                    annotation, default = list[typing.get_args(annotation)[0]], list(default)
                    repeated.add(f.name)
                if default is dataclasses.MISSING:
                    default = None if given_only else ...
                settings = {"help": _help(f, default, presets), "rich_help_panel": panel, **extra.get(f.name, {})}
                option = typer.Option(default, *_declarations(f, annotation, flags), **settings)
                generated[f.name] = inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                                      annotation=annotation)
        own = [p for name, p in signature.parameters.items() if name != into]
        clash = sorted({p.name for p in own} & set(generated))
        if clash:
            raise TypeError(f"{command.__name__}: parameter(s) {', '.join(clash)} are also config fields")
        # typer hands its context to the one parameter of that type: the command's own, or one added here
        ctx_name = next((p.name for p in own if p.annotation is typer.Context), None)
        if ctx_name is None:
            own.append(inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        @functools.wraps(command)
        def with_options(*args, **kwargs):
            ctx = kwargs[ctx_name] if ctx_name else kwargs.pop("_ctx")
            values = {name: kwargs.pop(name) for name in generated}
            if given_only:
                values = {k: v for k, v in values.items()
                          if ctx.get_parameter_source(k).name not in ("DEFAULT", "DEFAULT_MAP")}
            values = {k: tuple(v) if k in repeated else v for k, v in values.items()}
            return command(*args, **kwargs, **{into: values})

        # in --help, sections in the order of `panels`, also for an option that `extra` moved to another one
        sections = [None, *panels]
        grouped = sorted(generated.values(), key=lambda p: _rank(sections, p.default.rich_help_panel))
        parameters = [*own, *grouped]
        with_options.__signature__ = signature.replace(parameters=parameters)
        with_options.__annotations__ = {p.name: p.annotation for p in parameters if p.annotation is not p.empty}
        return with_options

    return decorate


def _rank(sections: list, panel) -> int:
    return sections.index(panel) if panel in sections else len(sections)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _declarations(f: dataclasses.Field, annotation, flags: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    if f.name in flags:
        return tuple(flags[f.name])
    flag = flag_of(f)
    if _without_none(annotation) is bool:
        return (f"{flag}/--no-{flag[2:]}",)
    return (flag,)


def _without_none(annotation):
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        others = [a for a in typing.get_args(annotation) if a is not type(None)]
        return others[0] if len(others) == 1 else annotation
    return annotation


def _help(f: dataclasses.Field, default, presets: Mapping[str, Mapping[str, object]]) -> str:
    """The field's help, plus where a preset starts from another value than the default shown."""
    text = f.metadata.get("help", "")
    notes = [f"{preset} preset: {_shown(f.name, values[f.name])}"
             for preset, values in presets.items() if f.name in values and values[f.name] != default]
    return f"{text} ({'; '.join(notes)})" if notes else text


def _shown(name: str, value) -> str:
    """A value as --help shows defaults: a bool as the flag that sets it."""
    if isinstance(value, bool):
        return name.replace("_", "-") if value else "no-" + name.replace("_", "-")
    return "none" if value is None else str(value)
