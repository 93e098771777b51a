"""`tokenpools config check` through the real console script entry point (typer's runner)."""

import resource
import subprocess
import sys
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


def _bomb(levels: int, width: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _check_in_a_small_box(path: Path) -> subprocess.CompletedProcess[str]:
    """`tokenpools config check` in a child limited to ~1.5 GB: a regression dies, not the machine."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))

    code = ("import sys; from tokenpools.cli import app; "
            "sys.argv = ['tokenpools', 'config', 'check', sys.argv[1]]; app()")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit, check=False)


def test_config_check_refuses_the_9x9_alias_bomb_in_one_line_exit_2(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    # As in the issue: the bomb is what `kind` says, so the old loader's `{kind!r}` expanded it.
    bomb.write_text("apiVersion: tokenpools.dev/v1alpha1\n" + _bomb(9, 9) + "kind: *a8\n")
    result = _check_in_a_small_box(bomb)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines[:5]
    assert lines[0].startswith(f"error: {bomb}: document 1: invalid YAML at line 6, column 5: aliases expand")
    assert len(lines[0]) < 300 + len(str(bomb))


def test_config_check_duplicate_key_is_exit_2_naming_key_and_line(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text((EXAMPLES / "pool.yaml").read_text().replace("kv: 850000", "kv: 850000\n    kv: 1"))
    result = CliRunner().invoke(app, ["config", "check", str(dup)])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert "dup.yaml: document 1: invalid YAML at line" in line
    assert "duplicate key 'kv' (first at line" in line


def test_config_check_huge_api_version_is_a_short_line(tmp_path):
    bad = tmp_path / "big.yaml"
    bad.write_text((EXAMPLES / "pool.yaml").read_text().replace("tokenpools.dev/v1alpha1", "v" * 1_000_000))
    result = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "apiVersion: must be 'tokenpools.dev/v1alpha1', got 'vvv" in line
    assert len(line) < 300 + len(str(bad))
