"""Shared fixtures: the repository, the shared RAVDESS copy, and the live local stack.

`stack` checks the stack's health once per session. When it is down, integration tests skip
with "run infra/up", unless SER_REQUIRE_STACK=1 (set by infra/test and CI), where they fail;
and a run with SER_REQUIRE_STACK=1 in which every integration test was skipped fails too.
With SER_REQUIRE_STACK=1 the session also fails when the stack's logs gained a traceback of
the stack's own while it ran (infra/ser_infra/logfaults.py `stack_tracebacks`).

The stack's Python, infra/ser_infra, lives in a folder of scripts, not an installed package:
this file puts infra/ on sys.path, so tests import it as `ser_infra`.

`shared_ravdess` skips its tests when the data is absent, unless SER_REQUIRE_DATA=1 (set by
infra/test) or CI=true, where they fail.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ser_stack.process_settings import ProcessSettings
from ser_stack.settings import SHARED_RAVDESS

# The live-stack fixtures (live_bucket, prefect_api) for every test module that names them.
pytest_plugins = ["tests.flows.live_stack"]

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO_ROOT / "infra"))


def stack_required() -> bool:
    return ProcessSettings.from_env().require_stack


def data_required() -> bool:
    return ProcessSettings.from_env().require_data or os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_ravdess(repo_root: Path) -> Path:
    """RAVDESS (16 kHz mono FLAC, actors 01-20), read-only, beside the repository.

    Missing, the tests that need it skip, except under infra/test (SER_REQUIRE_DATA=1) and in
    CI (CI=true), which have shared/ beside the clone: there they fail, so that the real-audio
    tests cannot silently stop running."""
    path = SHARED_RAVDESS.resolve()
    if not path.is_dir():
        message = f"RAVDESS not found at {path} (ser_stack.settings.SHARED_RAVDESS)"
        if data_required():
            pytest.fail(message + "; SER_REQUIRE_DATA=1 or CI=true requires it", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def stack():
    """`ser_stack.settings.StackSettings` of a healthy stack (S3, MLflow, Prefect, worker), from the environment."""
    from ser_infra.health import health
    from ser_stack.settings import StackSettings

    settings = StackSettings.from_env()
    unhealthy = {
        name: reason for name, reason in health(settings, local=False, scheduler=False).items() if reason
    }
    if unhealthy:
        message = "stack not healthy: " + "; ".join(f"{name}: {reason}" for name, reason in unhealthy.items())
        if stack_required():
            pytest.fail(message + " (SER_REQUIRE_STACK=1)", pytrace=False)
        pytest.skip(f"run infra/up ({message})")
    return settings


_integration_outcomes: dict[str, str] = {}
_log_offsets: dict[Path, int] = {}


def stack_log_dir() -> Path:
    from ser_stack.settings import StackSettings

    return StackSettings.from_env().state_dir / "logs"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under SER_REQUIRE_STACK=1, remember how long each stack log is, to read only what the session adds."""
    if stack_required():
        _log_offsets.update({path: path.stat().st_size for path in stack_log_dir().glob("*.log")})


def stack_log_faults() -> list[str]:
    """``<log>: <exception line>`` for each traceback of the stack's own that the logs gained
    since the session started."""
    from ser_infra.logfaults import stack_tracebacks
    from ser_stack.settings import StackSettings

    db = StackSettings.from_env().db
    faults = []
    for path in sorted(stack_log_dir().glob("*.log")):
        with open(path, "rb") as handle:
            handle.seek(_log_offsets.get(path, 0))
            added = handle.read().decode(errors="replace")
        faults += [f"{path}: {line}" for line in stack_tracebacks(path.stem, added, db)]
    return faults


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember the integration tests that will run (after -k / -m deselection)."""
    for item in session.items:
        if item.get_closest_marker("integration"):
            _integration_outcomes[item.nodeid] = "skipped"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Record what each integration test did: its call's outcome, or "failed" when its setup failed."""
    if report.nodeid in _integration_outcomes and (
        report.when == "call" or (report.when == "setup" and report.failed)
    ):
        _integration_outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not stack_required() or exitstatus == pytest.ExitCode.INTERRUPTED:
        return  # an interrupted session (Ctrl-C) keeps its status: infra/test stops the other one on it
    messages = []
    if _integration_outcomes and all(o == "skipped" for o in _integration_outcomes.values()):
        messages.append(
            f"SER_REQUIRE_STACK=1 but all {len(_integration_outcomes)} integration tests were skipped: "
            "the stack was not reachable or every integration test skipped itself"
        )
    faults = stack_log_faults()
    if faults:
        messages.append(
            f"the stack's logs gained {len(faults)} traceback(s) during the tests:\n  " + "\n  ".join(faults)
        )
    if messages:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            for message in messages:
                reporter.write_line(message, red=True, bold=True)
