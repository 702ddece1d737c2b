"""What every command's config is made of: options declared once, checked once, carried whole.

An option is a dataclass field whose metadata (:class:`Opt`) holds its help text, its command-line
flag and its rule. The CLI builds its options from these fields (``sslprobe.cli.params``), the
library takes the config whole, and a run writes it as JSON: :meth:`Config.to_json` and
:meth:`Config.from_json` round-trip, so a rerun compares configs rather than dicts
(docs/architecture.md, "Options"). Torch-free: the command line checks options before torch loads.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sslprobe.errors import SSLProbeError

C = TypeVar("C", bound="Config")
Rule = Callable[[str, Any], None]  # (the option's flag, its value) → raises SSLProbeError


@dataclass(frozen=True, kw_only=True)
class Opt:
    """One option's declaration: the field's metadata.

    ``flag``: its command-line name(s) when not ``--field-name`` (``"--C"``, ``"--blur/--no-blur"``);
    ``cli``: False for library-only options; ``argument``: a positional argument. When the command
    line takes another form than the field (a comma list for a tuple, a switch for a mode),
    ``cli_type``/``cli_default`` declare that form and ``parse(flag, value)`` turns it into the field.
    """

    help: str = ""
    rule: Rule | None = None
    flag: str | None = None
    panel: str | None = None
    cli: bool = True
    argument: bool = False
    cli_type: Any = None
    cli_default: Any = None  # with cli_type: the command line's default (else the field's)
    parse: Callable[[str, Any], Any] | None = None
    show_default: bool = True
    path: bool | None = None  # a Path option: False for a file (dir_okay=False), True for a folder (file_okay=False)
    title: str | None = None  # what messages call it, when not its flag ("the kNN temperature")
    required: bool = False  # required on the command line though the library has a default
    metavar: str | None = None  # what --help shows for the value(s), e.g. "MIN MAX" for a pair typed as two numbers


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           **kw: Any) -> Any:
    """A config field with its declaration (see :class:`Opt`); ``factory`` for a nested config's default."""
    meta = {"opt": Opt(help=help, **kw)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declaration(f: dataclasses.Field) -> Opt:
    return f.metadata.get("opt", Opt(cli=False))


def flag_of(f: dataclasses.Field) -> str:
    """The name an error message uses: ``--batch-size``, or the first name of a declared flag."""
    d = declaration(f)
    if d.flag:
        return d.flag.split("/")[0]
    return f.name.upper() if d.argument else "--" + f.name.replace("_", "-")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Base of every command's config: frozen, checked when built, JSON round-trip, nested configs allowed.

    Subclasses add fields with :func:`option` and cross-option rules in :meth:`rules`.
    """

    name: ClassVar[str] = ""  # the command it configures, for messages

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            d = declaration(f)
            if d.rule is not None and not isinstance(value, Config):
                d.rule(d.title or flag_of(f), value)
        self.rules()

    def rules(self) -> None:
        """Rules between options (one message each); the per-option ones are the fields' own."""

    # -- building -------------------------------------------------------------------------------------
    @classmethod
    def build(cls: type[C], **options: Any) -> C:
        """The config from keyword options, the library's convenience form: nested configs may come as dicts,
        sequences become tuples, paths strings; an unknown keyword is one clear line."""
        hints = _hints(cls)
        options = _nest(cls, hints, dict(options))
        return cls(**{k: _coerce(hints[k], v) for k, v in options.items()})

    @classmethod
    def of(cls: type[C], first: Any = None, /, **options: Any) -> C:
        """The library's two call forms: ``f(config)`` (options then change it) or ``f(DATA, **options)``
        (the first positional field, then the options, as on the command line)."""
        if isinstance(first, cls):
            return first.replace(**options) if options else first
        argument = next(f.name for f in dataclasses.fields(cls) if declaration(f).argument)
        return cls.build(**{argument: first, **options})

    def replace(self: C, **changes: Any) -> C:
        return type(self).build(**{**self.shallow(), **changes})

    def shallow(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    # -- JSON ---------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists, paths as strings, nested configs as objects)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls: type[C], doc: Mapping[str, Any]) -> C:
        """The config written by :meth:`to_json`; keys it does not know (a newer version's) are refused,
        keys it lacks (an older version's) take their defaults."""
        return cls.build(**dict(doc))

    def differences(self, other: Config) -> list[str]:
        """Option names whose values differ (nested ones as ``augment.flip_p``)."""
        a, b = self.to_json(), other.to_json()
        return [k for k, v in _flatten(a) if dict(_flatten(b)).get(k, _NOTHING) != v]

    # -- the command line it stands for ------------------------------------------------------------
    def flags(self) -> list[str]:
        """The command-line flags that give this config (defaults left out), for reports and reruns."""
        out: list[str] = []
        for f in dataclasses.fields(self):
            value, d = getattr(self, f.name), declaration(f)
            if isinstance(value, Config):
                out += value.flags()
            elif d.cli and not d.argument and value != f.default:
                out += _flag_words(f, d, value)
        return out


_NOTHING = object()


def _nest(cls: type, hints: Mapping[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Keywords of a nested config given flat (``blur=False`` for ``augment.blur``) moved into it; an
    unknown keyword is one clear line."""
    own = {f.name for f in dataclasses.fields(cls)}
    nested = {n: tp for n, tp in hints.items() if n in own and isinstance(tp, type) and issubclass(tp, Config)}
    for key in [k for k in options if k not in own]:
        home = next((n for n, tp in nested.items() if key in {f.name for f in dataclasses.fields(tp)}), None)
        if home is None:
            raise SSLProbeError(f"unknown {getattr(cls, 'name', '') or cls.__name__} option '{key}'")
        inner = options.get(home)
        inner = inner.shallow() if isinstance(inner, Config) else dict(inner or {})
        options[home] = {**inner, key: options.pop(key)}
    return options


def _flag_words(f: dataclasses.Field, d: Opt, value: Any) -> list[str]:
    flag = flag_of(f)
    if d.cli_type is bool and d.parse is not None:  # a switch that stands for a mode (--resume, --float64)
        return [flag] if d.parse(flag, True) == value else []
    if d.flag and "/" in d.flag:  # --x/--no-x
        on, off = d.flag.split("/")
        return [on if value else off] if value is not None else []
    if isinstance(value, bool):  # typer's default for a bool is --x/--no-x; a declared single flag only turns on
        return [flag] if value else ([] if d.flag else ["--no-" + f.name.replace("_", "-")])
    if value is None:
        return []
    if isinstance(value, tuple):
        if d.cli_type is str:
            return [flag, ",".join(map(str, value)) or "none"]
        return [flag, *map(str, value)]
    return [flag, str(value)]


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def _plain(v: Any) -> Any:
    if isinstance(v, Config):
        return v.to_json()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(tp: Any, v: Any) -> Any:
    """A keyword or JSON value as the field's type: tuples from lists, nested configs from dicts, Path from str."""
    if v is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], v) if len(inner) == 1 else v
    if isinstance(tp, type) and issubclass(tp, Config):
        return v if isinstance(v, tp) else tp.build(**dict(v))
    if origin is tuple and isinstance(v, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], x) for x in v)
        return tuple(_coerce(a, x) for a, x in zip(args, v)) if args and len(args) == len(v) else tuple(v)
    if tp is Path and isinstance(v, (str, os.PathLike)):
        return Path(v)
    if tp is str and isinstance(v, os.PathLike):
        return os.fspath(v)
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v
