"""The Go tool builds' failure paths (tokenpools.infra.gobuild and its three users): a missing ``go`` and a
version the module proxy does not have each give one line that says what to do, and leave no partial
binary behind. Real ``go``, real module proxy; the missing ``go`` is the one stand-in (``find_go``
answers None), since Go is installed on every machine these tests run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenpools.infra import gobuild, helm, promtool
from tokenpools.infra.kube_local import build as kube_build


@pytest.mark.parametrize("module, ensure, error, says", [
    (promtool, lambda: promtool.ensure_promtool(), promtool.PromtoolBuildError, "prebuilt promtool"),
    (helm, lambda: helm.ensure_helm(), helm.HelmBuildError, "prebuilt helm"),
    (kube_build, lambda: kube_build.ensure_binaries(), kube_build.KubeBuildError, "prebuilt binaries"),
])
def test_without_go_the_error_says_what_to_install(module, ensure, error, says, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENPOOLS_CACHE", str(tmp_path))
    monkeypatch.setattr(module, "find_go", lambda: None)
    with pytest.raises(error) as raised:
        ensure()
    message = str(raised.value)
    assert "`go` is not on PATH" in message and "Go >= 1.26" in message and says in message


def test_a_version_the_proxy_lacks_fails_with_the_log_tail_and_no_partial_binary(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENPOOLS_CACHE", str(tmp_path))
    with pytest.raises(promtool.PromtoolBuildError) as raised:
        promtool.ensure_promtool("v0.0.0-tokenpools-no-such-version")
    message = str(raised.value)
    assert "failed (exit 1)" in message and "no-such-version" in message and "full log" in message
    tools = tmp_path / "tools"
    assert not promtool.promtool_path("v0.0.0-tokenpools-no-such-version").exists()
    assert not list(tools.glob(".*.partial")), "the staging folder is removed"
    assert list(tools.glob("promtool-*-build.log")), "the build log is kept"


def test_build_nice_is_checked() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(gobuild.NICE_ENV, "high")
        with pytest.raises(ValueError, match="0 to 19"):
            gobuild.lower_priority()
        mp.setenv(gobuild.NICE_ENV, "7")
        assert callable(gobuild.lower_priority())
        mp.delenv(gobuild.NICE_ENV)
        assert gobuild.lower_priority() is None
