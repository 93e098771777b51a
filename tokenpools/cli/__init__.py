"""The `tokenpools` command line.

Each concern registers its own sub-application here, so this file stays a table of contents.
"""

from __future__ import annotations

import typer

from tokenpools.cli import admitter as admitter_cli
from tokenpools.cli import config as config_cli
from tokenpools.cli import emulate as emulate_cli
from tokenpools.cli import experiment as experiment_cli
from tokenpools.cli import experiment_http as experiment_http_cli
from tokenpools.cli import history as history_cli
from tokenpools.cli import load as load_cli
from tokenpools.cli import operator as operator_cli
from tokenpools.cli import report as report_cli
from tokenpools.cli import scaler as scaler_cli
from tokenpools.cli import streams as streams_cli
from tokenpools.cli import up as up_cli

app = typer.Typer(
    name="tokenpools",
    help="Token pools: entitlements in tokens/s, KV cache and concurrency for multi-tenant LLM inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cli.app, name="config")
app.add_typer(config_cli.schemas_app, name="schemas")
app.command("admitter")(admitter_cli.admitter)
app.command("emulate")(emulate_cli.emulate)
app.command("load")(load_cli.load)
app.add_typer(streams_cli.app, name="streams")
app.add_typer(history_cli.app, name="history")
app.command("scaler")(scaler_cli.scaler)
app.command("operator")(operator_cli.operator)
app.command("up")(up_cli.up)
app.command("report")(report_cli.report)
app.add_typer(experiment_cli.app, name="experiment")
experiment_cli.app.command("overload-http")(experiment_http_cli.overload_http)
app.command("demo")(experiment_cli.demo)


def main() -> None:
    app()
