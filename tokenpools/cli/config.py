"""`tokenpools config check` and `tokenpools schemas export` (JSON Schema files and the CRDs)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Validate pool, entitlement and workload configs.", no_args_is_help=True)
schemas_app = typer.Typer(help="JSON Schema files and CRDs generated from the models.", no_args_is_help=True)
out = Console(highlight=False)

EXIT_BAD_CONFIG = 2


@app.command("check")
def check(paths: list[Path] = typer.Argument(..., help="YAML files or folders of them.")) -> None:
    """Validate configs; print one line per problem and exit 2 if there is any."""
    from schemas.loader import ConfigError, load_config

    try:
        config = load_config(*paths)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)  # one unwrapped line each, for grep and CI logs
        raise typer.Exit(EXIT_BAD_CONFIG) from None
    out.print(
        f"ok: {len(config.pools)} pool(s), {len(config.entitlements)} entitlement(s), "
        f"{len(config.workloads)} workload(s)"
    )


@schemas_app.command("export")
def export_schemas(
    check_only: bool = typer.Option(False, "--check", help="Exit 1 if the committed files are stale."),
    crd_dir: Path | None = typer.Option(
        None, "--crd-dir", help="Where the CRDs go (default: deploy/helm/tokenpools/crds/ of this checkout)."
    ),
) -> None:
    """Write schemas/jsonschema/*.json and the Kubernetes CRDs from the pydantic models."""
    from schemas import crd, export

    crds_at = crd_dir or crd.CRD_DIR
    if check_only:
        stale = [*export.stale(), *(str(crds_at / f) for f in crd.stale(crds_at))]
        if stale:
            typer.echo(f"stale generated files: {', '.join(stale)}; run `{crd.EXPORT_COMMAND}`", err=True)
            raise typer.Exit(1)
        out.print("JSON Schema files and CRDs are up to date")
        return
    for path in [*export.export(), *crd.export(crds_at)]:
        out.print(f"wrote {path}")
