"""The `aekit` command: the application of cli/app.py with every command registered, in the order --help lists them.

Installed as `aekit.cli`; the entry point is `aekit.cli.main:app`.
"""

from __future__ import annotations

from aekit.cli import edge_cmd, export_cmd, train_cmd
from aekit.cli.app import app, main
from aekit.cli.data_cmd import data_app

for command in (
    train_cmd.train,
    export_cmd.export,
    export_cmd.bench,
    edge_cmd.encode,
    edge_cmd.decode,
    edge_cmd.reconstruct,
    edge_cmd.score,
    edge_cmd.info,
):
    app.command()(command)
app.add_typer(data_app, name="data")

__all__ = ["app", "main"]
