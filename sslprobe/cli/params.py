"""Command-line options made from config fields: each option is declared once, on its config (config/).

:func:`config_command` registers a Typer command whose options are the fields of a config class
(nested configs flattened), plus the few display switches the command function declares itself;
the command function receives the config, built and checked (docs/architecture.md, "Options").
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from sslprobe.config.base import Config, Opt, declaration, flag_of

AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]


def _fields(cls: type[Config]) -> Iterator[tuple[dataclasses.Field, Opt, Any]]:
    """Every command-line field of ``cls``, nested configs' fields in their place."""
    hints = typing.get_type_hints(cls)
    own = cls.__dict__.get("__annotations__", {})
    # the command's own options first, then those of the shared bases (common.Runtime, common.ImageInputs)
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        tp = hints[f.name]
        if isinstance(tp, type) and issubclass(tp, Config):
            yield from _fields(tp)
        elif declaration(f).cli:
            yield f, declaration(f), tp


def _default(f: dataclasses.Field, d: Opt) -> Any:
    if d.required:
        return inspect.Parameter.empty
    if d.cli_type is not None and (d.cli_default is not None or d.cli_type is bool):
        return d.cli_default
    if f.default is dataclasses.MISSING:
        return inspect.Parameter.empty
    if d.cli_type is str and isinstance(f.default, tuple):
        return ",".join(map(str, f.default)) or None
    return f.default


def _parameter(f: dataclasses.Field, d: Opt, tp: Any) -> inspect.Parameter:
    info: dict[str, Any] = {"help": d.help, "show_default": d.show_default}
    if d.path is not None:
        info["file_okay" if d.path else "dir_okay"] = False
    if d.argument:
        meta = typer.Argument(**info)
    else:
        meta = typer.Option(*([d.flag] if d.flag else []), rich_help_panel=d.panel, metavar=d.metavar, **info)
    cli_type = d.cli_type or tp
    if d.cli_type is str and isinstance(f.default, tuple):  # a comma list
        cli_type = str | None
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[cli_type, meta],
                             default=_default(f, d))


def build_config(cls: type[Config], values: dict[str, Any]) -> Config:
    """The config from parsed command-line values (consumed from ``values``): nested configs built in turn,
    each field's ``parse`` applied, options not on the command line left at their defaults."""
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp, d = hints[f.name], declaration(f)
        if isinstance(tp, type) and issubclass(tp, Config):
            kw[f.name] = build_config(tp, values)
        elif d.cli and f.name in values:
            v = values.pop(f.name)
            kw[f.name] = d.parse(flag_of(f), v) if d.parse is not None else v
    return cls.build(**kw)


def config_command(app: typer.Typer, cls: type[Config], **command: Any) -> Callable[[Callable], Callable]:
    """Register ``fn(config, **switches)`` as a Typer command whose options are ``cls``'s fields + ``fn``'s own."""
    def wrap(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY)
               for p in list(inspect.signature(fn).parameters.values())[1:]]
        made = [_parameter(f, d, tp) for f, d, tp in _fields(cls)]
        names = [p.name for p in made + own]
        assert len(names) == len(set(names)), f"{cls.__name__}: an option is declared twice"
        ordered = made + own  # keyword-only: the declared order is --help's order

        def run(**values: Any) -> Any:
            switches = {p.name: values.pop(p.name) for p in own}
            return fn(build_config(cls, values), **switches)

        run.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in ordered}
        run.__name__, run.__doc__, run.__module__ = fn.__name__, fn.__doc__, fn.__module__
        app.command(name=command.pop("name", fn.__name__.replace("_", "-")), **command)(run)
        return fn
    return wrap
