"""Start, check and stop the local SER stack, all bound to SER_HOST (127.0.0.1 by default).

Components, in start order (each in its module of infra/ser_infra/, with its start, check and stop):
  postgres PostgreSQL, with SER_DB=postgres only: Prefect's, MLflow's and Optuna's databases (postgres.py)
  s3       SeaweedFS `weed mini` (S3 API with access-key auth), buckets created with boto3 (seaweedfs.py)
  mlflow   MLflow tracking server (SQLite backend, artifacts proxied to s3://<mlflow bucket>/artifacts)
  prefect  Prefect server (SQLite under PREFECT_HOME)
  worker   one Prefect process worker polling the work pool (created if missing) (prefect_server.py)

`health` also checks the Prefect server's scheduler, which can fail while the server answers:
every deployment with an active schedule must have scheduled runs, and the server's log must
hold no traceback since it started (health.py).

Every process is started in its own session (process group); its pid and start time go to
`<state>/pids/<name>.json`, its output to `<state>/logs/<name>.log`. `down` signals exactly
those process groups, so it never touches a process this script did not start (state.py).

Usage (through the bash wrappers in infra/):
  python infra/stack.py up | down [--purge] | health | env | backup DIR | restore DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

# run as a script, this folder (ser_infra) is on sys.path already; the repository (ser_stack) is not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ser_infra.backup import backup, restore  # noqa: E402
from ser_infra.component import StackError  # noqa: E402
from ser_infra.environment import env_lines  # noqa: E402
from ser_infra.health import database_note, health  # noqa: E402
from ser_infra.lifecycle import components, down, up  # noqa: E402
from ser_stack.process_settings import ProcessSettings  # noqa: E402
from ser_stack.settings import StackSettings, exit_if_bad_environment  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infra/stack.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    timeout = ProcessSettings.from_env().up_timeout_s
    up_parser = sub.add_parser("up", help="start what is not running, wait until all is healthy")
    up_parser.add_argument("--timeout", type=float, default=timeout)
    down_parser = sub.add_parser("down", help="stop exactly what up started")
    down_parser.add_argument("--purge", action="store_true", help="also delete the state folder (all data)")
    sub.add_parser("health", help="print a table; exit 0 only when every component is healthy")
    sub.add_parser("env", help="print export lines for clients")
    backup_parser = sub.add_parser("backup", help="back up the running stack into a new or empty folder")
    backup_parser.add_argument("dir", type=Path)
    restore_parser = sub.add_parser("restore", help="restore a backup onto the running, empty stack")
    restore_parser.add_argument("dir", type=Path)
    restore_parser.add_argument("--timeout", type=float, default=timeout)
    return parser


def run_up(settings: StackSettings, args: argparse.Namespace) -> int:
    try:
        started = up(settings, args.timeout)
    except (StackError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(
            f"infra/up failed: {exc}\n{detail.decode(errors='replace') if isinstance(detail, bytes) else detail}",
            file=sys.stderr,
        )
        return 1
    print(
        f"stack up (state: {settings.state_dir}); started: {', '.join(started) or 'nothing, all were running'}"
    )
    for component in components(settings):
        print(f"  {component.name:8} {component.url}")
    return 0


def run_down(settings: StackSettings, args: argparse.Namespace) -> int:
    stopped = down(settings, args.purge)
    print(
        f"stopped: {', '.join(stopped) or 'nothing was running'}"
        + (f"; deleted {settings.state_dir}" if args.purge else "")
    )
    return 0


def run_health(settings: StackSettings, args: argparse.Namespace) -> int:
    table = health(settings)
    where = {c.name: c.url for c in components(settings)}
    where["scheduler"] = f"deployments of {where['prefect']}"
    where["trainings"] = f"train-<corpus> limits of {where['prefect']}"
    where["database"] = "database of Prefect, MLflow, Optuna"
    notes = {"database": database_note(settings)}
    for name, reason in table.items():
        said = reason if reason is not None else notes.get(name, "")
        print(f"{name:9} {'ok' if reason is None else 'DOWN':5} {where[name]:44} {said}")
    return 0 if all(reason is None for reason in table.values()) else 1


def run_env(settings: StackSettings, args: argparse.Namespace) -> int:
    print("\n".join(env_lines(settings)))
    return 0


def run_backup_or_restore(settings: StackSettings, args: argparse.Namespace) -> int:
    try:
        if args.command == "backup":
            summary = backup(settings, args.dir.resolve())
        else:
            summary = restore(settings, args.dir.resolve(), args.timeout)
    except StackError as exc:
        print(f"infra/{args.command} failed: {exc}", file=sys.stderr)
        return 1
    print(f"infra/{args.command} {args.dir}: {json.dumps(summary)}")
    return 0


COMMANDS = {
    "up": run_up,
    "down": run_down,
    "health": run_health,
    "env": run_env,
    "backup": run_backup_or_restore,
    "restore": run_backup_or_restore,
}


def main(argv: list[str] | None = None) -> int:
    exit_if_bad_environment("infra/stack.py")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # the Prefect client logs every HTTP request at INFO through httpx: not for a person's terminal
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return COMMANDS[args.command](StackSettings.from_env(), args)


if __name__ == "__main__":
    sys.exit(main())
