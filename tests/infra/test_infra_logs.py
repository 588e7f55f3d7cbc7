"""Reading the stack's logs: what a process wrote since its latest start, and the tracebacks in it."""

from __future__ import annotations

from ser_infra.health import check_database, database_locked_lines, database_note
from ser_infra.logfaults import stack_tracebacks, tracebacks
from ser_infra.state import START_HEADER, log_path, log_since_start, start_process

TRACEBACK = """Traceback (most recent call last):
  File "/x/scheduler.py", line 273, in schedule_deployments
    inserted_runs = await models.deployments._insert_scheduled_flow_runs(
sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement
"""


def test_each_traceback_is_named_by_its_exception_line():
    text = (
        "INFO started\n"
        + TRACEBACK
        + "INFO later\n"
        + TRACEBACK.replace("InvalidRequestError", "OperationalError")
    )
    assert tracebacks(text) == [
        "sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement",
        "sqlalchemy.exc.OperationalError: Can't evaluate bulk DML statement",
    ]
    assert tracebacks("INFO all fine\nWARNING a word: Traceback-free\n") == []
    assert tracebacks("x\nTraceback (most recent call last):\n  File 'a'") == ["(traceback cut short)"]


def test_only_what_was_logged_since_the_latest_start_counts(tmp_path):
    state = tmp_path / "state"
    start_process(
        state, "talker", ["python3", "-c", "print('first life')"], {"PATH": "/usr/bin:/bin"}, tmp_path
    )
    log = log_path(state, "talker")
    _wait_for(log, "first life")
    log.write_text(log.read_text() + TRACEBACK)
    assert tracebacks(log_since_start(log))
    start_process(
        state, "talker", ["python3", "-c", "print('second life')"], {"PATH": "/usr/bin:/bin"}, tmp_path
    )
    _wait_for(log, "second life")
    since = log_since_start(log)
    assert "second life" in since and "first life" not in since
    assert tracebacks(since) == []
    assert log_since_start(tmp_path / "absent.log") == ""


def _wait_for(path, text, timeout_s=30.0):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} after {timeout_s} s")


def test_a_failing_flow_run_in_the_worker_log_is_not_a_fault_of_the_stack():
    run_failure = (
        "18:30:30.892 | ERROR   | Flow run 'easygoing-narwhal' - Encountered exception during execution\n"
        + TRACEBACK
    )
    task_failure = (
        "18:30:30.053 | ERROR   | Task run 'parse-and-check-8ca' - Task run failed with exception\n"
        + TRACEBACK
    )
    worker_fault = "18:31:00.000 | ERROR   | prefect.worker.process - lost the API\n" + TRACEBACK
    for db in ("sqlite", "postgres"):
        assert stack_tracebacks("worker", run_failure + task_failure, db) == []
        assert len(stack_tracebacks("worker", run_failure + worker_fault, db)) == 1
        assert len(stack_tracebacks("prefect", run_failure, db)) == 1


def test_the_prefect_servers_sqlite_lock_errors_are_not_counted_but_other_errors_are():
    """Concurrent fold runs make Prefect's SQLite server answer some writes with "database is
    locked" (the clients retry); on SQLite those do not count, any other server traceback still
    does; on PostgreSQL nothing excuses them."""
    locked = "ERROR | prefect.server - Encountered error during state validation\nTraceback (most recent call last):\n  File x\nsqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked\n"
    other = "ERROR | prefect.server - boom\nTraceback (most recent call last):\n  File y\nKeyError: 'z'\n"
    assert stack_tracebacks("prefect", locked, "sqlite") == []
    assert stack_tracebacks("prefect", locked + other, "sqlite") == ["KeyError: 'z'"]
    assert stack_tracebacks("mlflow", locked, "sqlite") != [], (
        "only the Prefect server's lock waits are expected"
    )
    assert stack_tracebacks("prefect", locked + other, "postgres") == [
        "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked",
        "KeyError: 'z'",
    ]


def test_postgres_log_faults_are_its_panic_and_fatal_lines_and_our_databases_errors():
    """PostgreSQL prints no tracebacks: its faults are PANIC and FATAL lines (a refused login, a
    crash) and the ERROR lines of the MLflow and Optuna databases (a statement refused there comes
    from our use of them); the sessions its fast shutdown ends (infra/down) are not faults, nor LOG
    lines, nor ERROR lines of Prefect's database, whose writes are Prefect's own."""
    ok = (
        "2026-12-01 08:44:49.882 UTC [1492] LOG:  starting PostgreSQL 15.18\n"
        "2026-12-01 09:44:49.882 UTC [1600] ser@mlflow FATAL:  terminating connection due to administrator command\n"
        "2026-12-01 09:44:49.882 UTC [1601] ser@prefect ERROR:  canceling statement due to user request\n"
        '2026-12-01 13:00:43.307 UTC [2995] ser@prefect ERROR:  duplicate key value violates unique constraint "pk_task_run"\n'
        "2026-12-01 13:00:43.307 UTC [2995] ser@prefect DETAIL:  Key (id)=(01a231b1) already exists.\n"
    )
    refused = '2026-12-01 08:50:01.000 UTC [1700] ser@prefect FATAL:  password authentication failed for user "ser"\n'
    crash = '2026-12-01 08:51:01.000 UTC [1492] PANIC:  could not write to file "pg_wal/xlogtemp.1"\n'
    registered = (
        '2026-12-01 16:40:46.056 UTC [26079] ser@mlflow ERROR:  duplicate key value violates unique constraint "registered_model_pk"\n'
        "2026-12-01 16:40:46.056 UTC [26079] ser@mlflow DETAIL:  Key (workspace, name)=(default, ser-ravdess) already exists.\n"
    )
    study = '2026-12-01 21:55:05.651 UTC [22832] ser@optuna ERROR:  duplicate key value violates unique constraint "ix_studies_study_name"\n'
    assert stack_tracebacks("postgres", ok, "postgres") == []
    found = stack_tracebacks("postgres", ok + refused + crash + registered + study, "postgres")
    assert [line.split("  ", 1)[1] for line in found] == [
        'password authentication failed for user "ser"',
        'could not write to file "pg_wal/xlogtemp.1"',
        'duplicate key value violates unique constraint "registered_model_pk"',
        'duplicate key value violates unique constraint "ix_studies_study_name"',
    ]


def test_health_counts_database_is_locked_lines_as_contention_on_sqlite_and_as_a_fault_on_postgres(tmp_path):
    """With SQLite, infra/health says how contended the database was instead of hiding the lock
    waits; with PostgreSQL, a "database is locked" line fails the database row."""
    from ser_stack.settings import StackSettings

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "prefect.log").write_text(
        "old start\nsqlite3.OperationalError: database is locked\n"
        + START_HEADER
        + "now\nsqlite3.OperationalError: database is locked\nx database is locked\n"
    )
    sqlite = StackSettings.from_env({"SER_STATE_DIR": str(tmp_path), "SER_DB": "sqlite"})
    assert database_locked_lines(sqlite) == 2, "only the lines since the latest start count"
    assert check_database(sqlite) is None
    assert "CONTENDED: 2" in database_note(sqlite)
    (logs / "prefect.log").write_text(START_HEADER + "now\n")
    assert "not contended" in database_note(sqlite)
    (logs / "prefect.log").write_text(START_HEADER + "database is locked\n")
    postgres = StackSettings.from_env(
        {"SER_STATE_DIR": str(tmp_path), "SER_DB": "postgres", "SER_PG_PORT": "1", "SER_PG_PASSWORD": "x"}
    )
    reason = check_database(postgres)
    assert reason is not None and "PostgreSQL at 127.0.0.1:1" in reason
