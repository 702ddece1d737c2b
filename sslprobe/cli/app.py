"""The ``sslprobe`` Typer app, its root options, one-line errors and the entry point.

Every command module (study.py, pretrain.py, …) registers on :data:`app`; ``sslprobe/cli/__init__``
imports them in the order ``--help`` lists them. Heavy libraries (torch, timm, datasets) are imported
inside the commands so that ``--help`` and argument errors answer at once.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import typer

from sslprobe.errors import SSLProbeError
from sslprobe.version import __version__

app = typer.Typer(
    name="sslprobe",
    help="BYOL pretraining, cached embeddings and linear probes on your own image folders.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
_STATE = {"debug": False}


def err(msg: str) -> None:
    """One line on stderr. File names that aren't valid UTF-8 arrive as surrogate escapes; print them as
    \\udcXX (what a real stderr does anyway) so a strict stream (pytest, a wrapper) can't crash on one."""
    typer.echo(msg.encode("utf-8", "backslashreplace").decode("utf-8"), err=True)


def interactive() -> bool:
    """Progress bars only where a person watches (not in pipes, logs or --json)."""
    return sys.stderr.isatty()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sslprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _STATE["debug"] = debug


_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


def main() -> None:
    """Entry point: user errors (ours and the parser's) become one line on stderr and exit code 2."""
    # Busy-waiting OpenMP threads make torch 4–20× slower when another process holds a core
    # (measured on 2-core machines); passive waiting costs nothing measurable when idle. Set before
    # torch loads, in the command-line process only (importing sslprobe changes no environment).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Typer ≥ 0.2x vendors click; find its exception types through a public class either way.
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(standalone_mode=False)
    except SSLProbeError as e:
        if _STATE["debug"]:
            raise
        err(f"error: {e}")
        sys.exit(2)
    except usage_error as e:
        cmd = e.ctx.command_path if e.ctx else "sslprobe"
        typer.echo(f"error: {e.format_message()} (see '{cmd} --help')", err=True)
        sys.exit(2)
    except click_exception as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        # A full disk or an unwritable --out is the user's to fix, not a bug: one line, not a traceback.
        if _STATE["debug"] or e.errno not in _USER_OS_ERRORS:
            raise
        where = f" ('{e.filename}')" if e.filename else ""
        err(f"error: {e.strerror or e}{where}; free some space or choose another --out/--cache-dir, then rerun")
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
