"""Fixtures every test folder may use.

Go tools built in the background: on a cold machine promtool, helm and the Kubernetes control plane take
minutes to build (cached afterwards, keyed by version). When the session will run tests that need them
(``tests/deploy``, ``tests/kube``), those tests are moved to the end of the run and the builds start at
once in a thread, at a lower CPU priority (``TOKENPOOLS_BUILD_NICE``), on the cores the other tests leave
idle; the fixtures that need a tool wait on its build's lock. ``TOKENPOOLS_PREBUILD=0`` turns it off.

A real ClickHouse engine (chDB, in-process) for the history tests: chDB opens one data directory per
process, so every test in this pytest process shares one directory (session scope) and gets a
database of its own, migrated from the repo's files. A test that needs a directory of its own runs
the code that opens it in a subprocess.

The static report's tests (``tests/dashboards/test_report_chromium.py``, ``tests/test_cli_report.py``) only
read the seeded history (``tests/streams/history/seed.py``), so they share one seeded database
(``seeded_history``), and one rendering of each panel (``shared_renders``): matplotlib draws the same panel
from the same rows, range and interval to the same PNG bytes, so a panel both modules draw is drawn once.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from streams.history.migrate import migrate
from streams.history.settings import StoreSettings
from streams.history.store import HistoryStore, open_store
from tests.history_store import store_settings_for

if TYPE_CHECKING:
    from dashboards.macros import TimeRange
    from dashboards.report.model import PanelResult
    from tests.streams.history.seed import Seed

_numbers = itertools.count()
TESTS = Path(__file__).resolve().parent
LATE = ("deploy", "kube")  # the folders whose tests need the Go tools


def _folder(item: pytest.Item) -> str:
    try:
        return Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return ""


def _prebuild(builds: list[Callable[[], object]]) -> None:
    for build in builds:
        try:
            build()
        except Exception as exc:  # the fixture that needs the tool builds again and fails with the reason
            print(f"background build {getattr(build, '__name__', build)} failed: {exc}", file=sys.stderr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    folders = {_folder(i) for i in items}
    if not folders & set(LATE):
        return
    items[:] = [i for i in items if _folder(i) not in LATE] + [i for i in items if _folder(i) in LATE]
    if os.environ.get("TOKENPOOLS_PREBUILD", "1") == "0" or config.option.collectonly:
        return
    from tokenpools.infra.helm import ensure_helm
    from tokenpools.infra.kube_local import ensure_binaries
    from tokenpools.infra.promtool import ensure_promtool

    builds: list[Callable[[], object]] = []
    if "deploy" in folders:
        builds += [ensure_promtool, ensure_helm]
    if "kube" in folders:
        builds += [ensure_helm, ensure_binaries]
    os.environ.setdefault("TOKENPOOLS_BUILD_NICE", "10")
    threading.Thread(target=_prebuild, args=(list(dict.fromkeys(builds)),), name="prebuild", daemon=True).start()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store_settings(chdb_dir: Path) -> StoreSettings:
    """chDB, or the server ``TOKENPOOLS_TEST_CLICKHOUSE_URL`` names (``tests/history_store.py``)."""
    return store_settings_for(chdb_dir, f"tokenpools_test_{os.getpid()}_{next(_numbers)}")


@pytest.fixture
def store(store_settings: StoreSettings) -> Iterator[HistoryStore]:
    s = open_store(store_settings)
    migrate(s, store_settings)
    yield s
    s.command(f"DROP DATABASE IF EXISTS {store_settings.database}")
    s.close()


@pytest.fixture(scope="session")
def history_seed() -> Seed:
    """The seeded three days as records (``seed.build()`` is deterministic): what the tests compare with."""
    from tests.streams.history import seed

    return seed.build()


@pytest.fixture(scope="session")
def seeded_history(chdb_dir: Path, history_seed: Seed) -> Iterator[tuple[HistoryStore, StoreSettings]]:
    """``history_seed`` in a database of the session's own, for tests that only read it (the report's)."""
    from tests.streams.history import seed

    settings = store_settings_for(chdb_dir, f"tokenpools_seeded_{os.getpid()}")
    s = open_store(settings)
    migrate(s, settings)
    seed.insert(s, history_seed)
    yield s, settings
    s.command(f"DROP DATABASE IF EXISTS {settings.database}")
    s.close()


@pytest.fixture(scope="session")
def _render_cache() -> dict[Any, bytes]:
    return {}


@pytest.fixture(scope="module")
def shared_renders(_render_cache: dict[Any, bytes]) -> Iterator[None]:
    """While the module runs, ``run_report`` draws a panel once per session for the same input.

    The key is the whole input of ``render_panel`` (the panel, its rows as the runner returned them, the
    status, range and interval), so only a drawing of exactly the same thing is reused: rows through an
    endpoint (ISO strings) are drawn again, and so is any panel in another range or interval.
    """
    import dashboards.report.runner as runner

    render = runner.render_panel

    def shared(result: PanelResult, time_range: TimeRange, interval_s: int) -> bytes:
        key = (result, time_range, interval_s)
        try:
            return _render_cache[key]
        except KeyError:
            png = _render_cache[key] = render(result, time_range, interval_s)
            return png
        except TypeError:  # a cell that cannot be hashed (a list): drawn every time
            return render(result, time_range, interval_s)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "render_panel", shared)
        yield
