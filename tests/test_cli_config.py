"""`tokenpools config check` through the real console script entry point (typer's runner)."""

from pathlib import Path

from typer.testing import CliRunner

from tokenpools.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"


def test_config_check_accepts_the_examples():
    result = CliRunner().invoke(app, ["config", "check", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 1 pool(s)")


def test_config_check_bad_file_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "pool.yaml").read_text().replace("kv: 850000", "kv: -1"))
    result = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "bad.yaml: document 1 (TokenPool \"llama-3-8b\"): spec.perReplica.kv:" in lines[0]
    assert "Traceback" not in result.output


def test_schemas_export_check_passes():
    result = CliRunner().invoke(app, ["schemas", "export", "--check"])
    assert result.exit_code == 0, result.output
