"""Every tokenpools command the chart runs parses with the real CLI: a renamed or missing option in a
template fails here, not in a crash-looping pod. The arguments go through click's own parser (typer's copy of it) (the
command's ``make_context``), which checks names, types and ranges without running anything."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main

# typer 0.29 vendors its own click (typer._click): its commands raise its exceptions, not click's.
from typer._click.core import Command, Context
from typer._click.exceptions import ClickException, NoSuchOption
from typer.core import TyperGroup as Group

from tests.deploy.test_helm_chart import EXAMPLE, render
from tests.deploy.test_helm_chart import helm as helm  # the session fixture that builds or finds helm
from tokenpools.cli import app

ENV_REFERENCE = re.compile(r"\$\(([A-Z_]+)\)")  # $(POD_NAME): the kubelet substitutes these


def containers(objects: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    out = []
    for o in objects:
        if o["kind"] != "Deployment":
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            if c["name"] != "vllm":  # vLLM's own image and flags: not ours to parse
                out.append((f"{o['metadata']['name']}/{c['name']}", [str(a) for a in c.get("args", [])]))
    return out


def parse(args: list[str]) -> Context:
    command: Command = typer.main.get_command(app)
    words = [ENV_REFERENCE.sub("x-from-env", a) for a in args]
    ctx = command.make_context("tokenpools", list(words), resilient_parsing=False)
    while isinstance(command, Group):
        # click keeps the subcommand's name apart from its arguments (``_protected_args`` since 8.2)
        head = list(getattr(ctx, "_protected_args", None) or [])
        if not head:
            break
        name, *rest = [*head, *ctx.args]
        sub = command.get_command(ctx, name)
        assert sub is not None, f"no command {name!r} in {args}"
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return ctx


@pytest.mark.parametrize("values", ["default", "example"])
def test_every_component_command_parses(helm: Any, values: str) -> None:
    objects = render(helm, *(("-f", str(EXAMPLE)) if values == "example" else ()))
    found = containers(objects)
    assert {name.split("/")[0].rsplit("-", 1)[-1] for name, _ in found} >= {
        "admitter", "worker", "operator", "scaler", "history"}
    for name, args in found:
        try:
            parse(args)
        except ClickException as exc:
            pytest.fail(f"{name}: {' '.join(args)}: {exc.format_message()}")


def test_a_wrong_option_is_caught() -> None:
    with pytest.raises(NoSuchOption):
        parse(["operator", "--kafka=k:9092"])
