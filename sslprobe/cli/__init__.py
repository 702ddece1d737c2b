"""The ``sslprobe`` command line: one module per command, each parse → check → call → render.

Options are the fields of each command's config (sslprobe/config/, made into Typer options by
params.py). The modules are imported in the order ``sslprobe --help`` lists the commands: the
study first, then the steps in the order a workflow runs them.
"""
# isort: off
from sslprobe.cli import study  # noqa: F401  (study, demo)
from sslprobe.cli import pretrain  # noqa: F401  (views, pretrain)
from sslprobe.cli import extract  # noqa: F401  (extract, cache)
from sslprobe.cli import probe  # noqa: F401  (probe, compare, predict)
from sslprobe.cli import finetune  # noqa: F401
# isort: on
from sslprobe.cli.app import app, main
from sslprobe.cli.extract import cache_app

app.add_typer(cache_app, name="cache")

__all__ = ["app", "main"]
