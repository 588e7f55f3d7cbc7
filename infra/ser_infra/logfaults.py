"""Faults of the stack itself in its components' logs: Python tracebacks in the servers' and the
worker's logs, PANIC, FATAL and some ERROR lines in PostgreSQL's (`stack_tracebacks`).

infra/health reads them in the Prefect server's log since its start; the test session
(tests/conftest.py) and the load benchmark in what every log gained while they ran.
"""

from __future__ import annotations

import re

RUN_FAILURE = re.compile(r"\| (?:Flow|Task) run '")
"""How the worker's log heads the failure of a flow or task run it executes: the run's own error
(bad data, a test failing a run on purpose), recorded as the run's state in Prefect."""

SQLITE_BUSY = "database is locked"
"""What Prefect's server on SQLite logs when several runs write at once (fold flow runs at a
``folds`` queue concurrency above 1): the request is answered with an error and the client retries
it (PrefectHQ/prefect#10188, #17473). A load limit of SQLite, not a fault; PostgreSQL has none, so
with SER_DB=postgres such a line is a fault like any other, and infra/health reports it."""

PG_FAULT = re.compile(
    r"^\S+ \S+ \S+ \[\d+\] (?:(?:\S+ )?(?:PANIC|FATAL)|\S+@(?:mlflow|optuna) ERROR):  "
    r"(?!terminating connection due to administrator command)",
    re.M,
)
"""A fault in the PostgreSQL server's log (lines headed by postgres.LOG_LINE_PREFIX): a PANIC or FATAL
line (a crash, a refused login, a full disk), or an ERROR line of the MLflow or Optuna database,
whose statements come from MLflow's server and our own Optuna storage: a statement refused there
(a duplicate key of two writers racing, a version registered the way MLflow's client does it,
flows/registry.py) is a fault of our code. Sessions ended by the server's own fast shutdown
(`infra/down`) are not faults, nor ERROR lines of Prefect's database, whose writes are Prefect's own
(its server absorbs a task run that arrives twice, ``pk_task_run``)."""


def tracebacks(text: str, skip_origin: re.Pattern[str] | None = None) -> list[str]:
    """The closing line of each Python traceback in `text` (``ValueError: ...``), in order.

    A traceback starts at a ``Traceback (most recent call last):`` line; its frames are indented;
    the first unindented line after them names the exception. With `skip_origin`, a traceback
    whose preceding line (the log record that printed it) matches is left out."""
    found = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if "Traceback (most recent call last):" not in line:
            continue
        if skip_origin is not None and index > 0 and skip_origin.search(lines[index - 1]):
            continue
        for after in lines[index + 1 :]:
            if after.strip() and not after.startswith((" ", "\t")):
                found.append(after.strip())
                break
        else:
            found.append("(traceback cut short)")
    return found


def stack_tracebacks(name: str, text: str, db: str) -> list[str]:
    """Faults of the stack itself in the log of component `name`, of a stack on database `db`
    (``sqlite`` or ``postgres``): every traceback in a server's log but, on SQLite only, the Prefect
    server's lock waits (:data:`SQLITE_BUSY`); in the worker's, those not printed for a failing flow
    or task run; in PostgreSQL's, its PANIC and FATAL lines and the MLflow and Optuna databases'
    ERROR lines (:data:`PG_FAULT`)."""
    if name == "postgres":
        return [text[match.start() :].split("\n", 1)[0] for match in PG_FAULT.finditer(text)]
    found = tracebacks(text, RUN_FAILURE if name == "worker" else None)
    if name == "prefect" and db == "sqlite":
        return [line for line in found if SQLITE_BUSY not in line]
    return found
