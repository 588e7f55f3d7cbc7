"""The live stack under full load (issue 23 item 4), on SQLite or PostgreSQL.

    python benchmarks/stack_load.py --db postgres|sqlite [--root ../shared/data/ravdess]
        [--out benchmarks/results/stack_load] [--requests 200] [--clients 2] [--folds 4]

Starts a stack of its own (``infra/up`` with ``SER_DB``, a state folder under ``--out`` and
ports apart from infra/up's and infra/test's), deploys the project's flows with the ``folds``
queue at concurrency ``--folds``, ingests RAVDESS (actors 1-20, one file per emotion and actor)
and trains fold 0 with tiny settings (the `pipeline-check` preset, as in the e2e tests) to have a champion. Then,
all at once:

- a training of folds 0..``--folds``-1 (plus its release model), so ``--folds`` fold runs at once;
- an ingest of the same corpus with new content (``announce`` off: no automation fires);
- a second training, queued behind the first by the corpus' one-slot limit;
- ``--requests`` requests (RAVDESS files, base64 FLAC) from ``--clients`` threads to the
  champion served by ``mlflow models serve`` (flows.serving), while the fold runs run.

Figures (written to ``<out>/<db>.json`` and printed): flow runs of the load phase by final state,
runs failed or lost (not finished within the time limit), "database is locked" lines in the
stack's logs, tracebacks of the stack's own in them, the latency of the served model while
training runs (p50 / p95 / max, errors), the peak RSS of the whole stack (every process of the
stack's process groups, the fold runs the worker starts and the model server; sampled every
0.5 s) and each component's own peak, and the wall time of each part. Figures, not assertions.
The stack is stopped and its state folder deleted at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "infra"))  # infra/ser_infra: the stack's Python (infra/README.md)

import psutil  # noqa: E402
import soundfile as sf  # noqa: E402

from benchmarks.common import load_average, machine_info  # noqa: E402
from benchmarks.serve_load import percentile, post, request_bodies  # noqa: E402
from ser_infra.logfaults import SQLITE_BUSY, stack_tracebacks  # noqa: E402
from ser_infra.state import recorded_names, recorded_pid  # noqa: E402
from ser_stack.settings import DERIVED_CLIENT_VARIABLES  # noqa: E402

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "ravdess"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "stack_load"
PORTS = {
    "SER_S3_PORT": "8671",
    "SER_WEED_MASTER_PORT": "9671",
    "SER_WEED_VOLUME_PORT": "8681",
    "SER_WEED_FILER_PORT": "8691",
    "SER_WEED_ADMIN_PORT": "9681",
    "SER_MLFLOW_PORT": "5371",
    "SER_PREFECT_PORT": "4571",
    "SER_PG_PORT": "5372",
}
SERVE_PORT = 5373
SERVED = "ser-stack-load-served"
"""The served model's name."""
PRESET = "pipeline-check"
"""The e2e tests' tiny training (ser_model/presets.py): the load is the stack's, not the model's."""
RUN_TIMEOUT_S = 1500
SAMPLE_S = 0.5
PACE_S = 0.5
"""Each client's pause before a request: 200 requests from 2 clients span a minute or more of training."""


def build_corpus(shared: Path, root: Path, gain: float) -> int:
    """One file per emotion and actor (actors 1-20) into a RAVDESS layout, rescaled by `gain` (a
    new gain: new content, a new manifest)."""
    count = 0
    for actor in range(1, 21):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for emotion in range(1, 9):
            for source in sorted((shared / folder.name).glob(f"03-01-{emotion:02d}-*"))[:1]:
                audio, rate = sf.read(source, dtype="float32")
                sf.write(folder / source.name, audio * gain, rate, subtype="PCM_16")
                count += 1
    return count


def run(cmd: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT_S) -> str:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def deployment_run(name: str, params: dict, env: dict[str, str], watch: bool) -> str:
    """``prefect deployment run`` (with ``--watch`` when `watch`); the flow run id."""
    import re

    cmd = [
        str(Path(sys.executable).parent / "prefect"),
        "deployment",
        "run",
        name,
        "--params",
        json.dumps(params),
    ]
    if watch:
        cmd += ["--watch", "--watch-timeout", str(RUN_TIMEOUT_S)]
    out = run(cmd, env, RUN_TIMEOUT_S + 60)
    return re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)


class StackRSS:
    """Peak of the summed RSS of every process of the stack (recorded process groups with their
    descendants, and the extra roots given: the model server), and each component's peak."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.extra: dict[str, int] = {}
        self.peak_mb, self.peaks = 0.0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> dict[str, float]:
        roots = {n: recorded_pid(self.state_dir, n) for n in recorded_names(self.state_dir)}
        roots.update(self.extra)
        sizes = {}
        for name, pid in roots.items():
            if pid is None:
                continue
            try:
                leader = psutil.Process(pid)
                procs = [leader, *leader.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            sizes[name] = total / 2**20
        return sizes

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            sizes = self.sample()
            self.peak_mb = max(self.peak_mb, sum(sizes.values()))
            for name, mb in sizes.items():
                self.peaks[name] = max(self.peaks.get(name, 0.0), mb)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return {
            "peak_mb": round(self.peak_mb),
            "component_peaks_mb": {k: round(v) for k, v in self.peaks.items()},
        }


def flow_runs_since(settings, since: float) -> list[dict]:
    """Flow runs created after `since` (epoch seconds) but those the server's scheduler makes
    (nightly retrains): name, state."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
        with get_client(sync_client=True) as client:
            runs = []
            while True:  # the API answers at most 200 at a time
                page = client.read_flow_runs(limit=200, offset=len(runs))
                runs += page
                if len(page) < 200:
                    break
    return [
        {"name": r.name, "state": r.state.type.value if r.state else "NONE"}
        for r in runs
        if r.created is not None and r.created.timestamp() >= since and not r.auto_scheduled
    ]


def wait_all_final(settings, since: float, deadline: float) -> list[dict]:
    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    while True:
        runs = flow_runs_since(settings, since)
        if all(r["state"] in final for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(5)


def register_champion(settings, scratch: Path) -> None:
    """A small random fbank model registered as ``SERVED@champion`` (as tests/e2e/conftest.py's
    champion): the served model, without a training before the load. Not ``ser-ravdess``: the
    trainings' promotion step needs the train flow's score tags on that model's champion."""
    import mlflow
    import torch

    from data_contracts.labels import LABELS
    from flows.pyfunc import log_pyfunc
    from ser_model.config import LossConfig, ModelConfig, SERConfig
    from ser_model.model import SERModel

    torch.manual_seed(0)
    model = ModelConfig(backbone="fbank", fbank_dim=64, fbank_layers=1, fbank_heads=2, embed_dim=32)
    config = SERConfig(
        labels=LABELS["ravdess"], model=model, loss=LossConfig(supcon_proj_dim=32), corpus="ravdess"
    )
    checkpoint = SERModel(config).eval().save_pretrained(scratch / "champion")
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = mlflow.MlflowClient(settings.tracking_uri)
    experiment_id = client.create_experiment("ser-stack-load")
    with mlflow.start_run(experiment_id=experiment_id):
        version = log_pyfunc(checkpoint, registered_model_name=SERVED).registered_model_version
    client.set_registered_model_alias(SERVED, "champion", str(version))


def folder_mib(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 1)


def backup_cycle(env: dict[str, str], backup_dir: Path) -> dict[str, Any]:
    """infra/backup of the loaded stack, then infra/down --purge, infra/up and infra/restore of it:
    wall times, the backup's size, and whether the champion came back the same."""
    from mlflow import MlflowClient

    from ser_stack.settings import StackSettings

    def champion() -> tuple:
        settings = StackSettings.from_env(env)
        version = MlflowClient(settings.tracking_uri).get_model_version_by_alias(SERVED, "champion")
        return version.version, version.run_id, sorted(version.aliases), version.tags

    if backup_dir.exists():
        shutil.rmtree(backup_dir)
    before = champion()
    began = time.monotonic()
    run([str(REPO / "infra" / "backup"), str(backup_dir)], env)
    backup_s = time.monotonic() - began
    run([str(REPO / "infra" / "down"), "--purge"], env)
    run([str(REPO / "infra" / "up")], env)
    began = time.monotonic()
    run([str(REPO / "infra" / "restore"), str(backup_dir)], env)
    restore_s = time.monotonic() - began
    summary = json.loads((backup_dir / "backup.json").read_text())
    return {
        "backup_s": round(backup_s, 1),
        "restore_s": round(restore_s, 1),
        "backup_mib": folder_mib(backup_dir),
        "objects": summary["objects"],
        "prefect": summary["prefect"],
        "same_champion": champion() == before,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument(
        "--port-offset", type=int, default=0, help="added to every port (two runs at once: 0 and 5)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the stack running and its state folder")
    return parser.parse_args(argv)


def stack_environment(args: argparse.Namespace, state: Path) -> dict[str, str]:
    """The environment of a stack of its own: this shell's, less the derived client variables, with
    the ports shifted, its state folder and database, and ``--folds`` folds at once."""
    base = {k: v for k, v in os.environ.items() if k not in DERIVED_CLIENT_VARIABLES}
    env = {
        **base,
        **{name: str(int(port) + args.port_offset) for name, port in PORTS.items()},
        "SER_STATE_DIR": str(state),
        "SER_DB": args.db,
        "SER_FOLD_CONCURRENCY": str(args.folds),
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def start_stack(env: dict[str, str], timings: dict[str, float]):
    """infra/up (again if a health request timed out on a loaded machine), then the deployments;
    returns the settings and the clients' environment."""
    from ser_stack.settings import StackSettings

    began = time.monotonic()
    try:
        run([str(REPO / "infra" / "up")], env)
    except SystemExit as exc:  # a health request timed out on a loaded machine: up again continues
        print(f"infra/up failed once, starting what is missing: {str(exc)[-300:]}", file=sys.stderr)
        run([str(REPO / "infra" / "up")], env)
    timings["up_s"] = time.monotonic() - began
    settings = StackSettings.from_env(env)
    env = {**env, **settings.client_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    run([sys.executable, "-m", "flows.deploy"], env)
    return settings, env


def serve_while_training(args, settings, env, corpus: Path, url: str, bodies, timings, load_start) -> dict:
    """A training of ``--folds`` folds, an ingest of the new data and a queued second training,
    with ``--requests`` requests to the served champion spread over the fold runs."""
    began = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        folds = list(range(args.folds))
        training = pool.submit(
            deployment_run, "train/train-ravdess", {"preset": PRESET, "folds": folds}, env, True
        )
        time.sleep(5)
        ingest = pool.submit(
            deployment_run,
            "ingest/ingest-ravdess",
            {"root": str(corpus / "v2"), "announce": False},
            env,
            True,
        )
        time.sleep(5)
        queued = deployment_run("train/train-ravdess", {"preset": PRESET, "folds": [0]}, env, False)
        # requests while the fold runs run, spread over the training (a pause between a
        # client's requests), from the moment a fold run runs
        waited = time.monotonic()
        while time.monotonic() - waited < 300 and not any(
            r["name"].startswith("ravdess-fold") and r["state"] == "RUNNING"
            for r in flow_runs_since(settings, load_start - 1)
        ):
            time.sleep(2)
        timings["until_a_fold_runs_s"] = time.monotonic() - began
        chosen = [bodies[i % len(bodies)] for i in range(args.requests)]

        def paced(item):
            time.sleep(PACE_S)
            return post(url, item[0])

        sent = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as clients:
            replies = list(clients.map(paced, chosen))
        served_s = time.perf_counter() - sent
        training_done = training.done()
        errors = []
        for name, future in (("training", training), ("ingest", ingest)):
            try:
                future.result()
            except SystemExit as exc:
                errors.append(f"{name}: {str(exc)[:500]}")
    return {
        "replies": replies,
        "served_s": served_s,
        "training_done": training_done,
        "errors": errors,
        "queued": queued,
        "began": began,
    }


def serving_figures(args, load: dict) -> dict[str, Any]:
    replies = load["replies"]
    latencies = [seconds for _, seconds, _ in replies]
    return {
        "requests": args.requests,
        "clients": args.clients,
        "errors": sum(1 for ok, _, _ in replies if not ok),
        "first_errors": [e for ok, _, e in replies if not ok][:3],
        "latency_p50_ms": round(1000 * percentile(latencies, 50)),
        "latency_p95_ms": round(1000 * percentile(latencies, 95)),
        "latency_max_ms": round(1000 * max(latencies)),
        "wall_s": round(load["served_s"], 1),
        "all_sent_while_training": not load["training_done"],
    }


def run_figures(runs: list[dict]) -> dict[str, Any]:
    by_state: dict[str, int] = {}
    for r in runs:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    return {
        "flow_runs": len(runs),
        "flow_runs_by_state": by_state,
        "runs_failed": sum(by_state.get(s, 0) for s in ("FAILED", "CRASHED")),
        "runs_lost": sum(n for s, n in by_state.items() if s not in ("COMPLETED", "FAILED", "CRASHED")),
        "failed_runs": [r for r in runs if r["state"] != "COMPLETED"],
    }


def log_figures(state: Path, db: str) -> dict[str, Any]:
    logs = {p.stem: p.read_text(errors="replace") for p in (state / "logs").glob("*.log")}
    return {
        "database_is_locked_lines": {k: v.count(SQLITE_BUSY) for k, v in logs.items()},
        "stack_faults": {
            k: stack_tracebacks(k, v, db)
            for k, v in logs.items()
            if k != "serve" and stack_tracebacks(k, v, db)
        },
    }


def measure(args: argparse.Namespace, state: Path, env: dict[str, str], rss: StackRSS) -> dict[str, Any]:
    """Start the stack, ingest, register a champion, serve it under the training load; the figures."""
    from flows.serving import running_model_server

    timings: dict[str, float] = {}
    settings, env = start_stack(env, timings)
    corpus = state / "corpus"
    files = build_corpus(args.root, corpus / "v1", 1.0)
    began = time.monotonic()
    deployment_run("ingest/ingest-ravdess", {"root": str(corpus / "v1"), "announce": False}, env, watch=True)
    timings["first_ingest_s"] = time.monotonic() - began
    register_champion(settings, state)
    build_corpus(args.root, corpus / "v2", 0.9)
    serve_files = sorted(corpus.joinpath("v1").glob("Actor_*/*.flac"))
    bodies = request_bodies(serve_files[:: max(1, len(serve_files) // 40)], "base64")
    rss.start()
    load_start = time.time()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with running_model_server(
        f"models:/{SERVED}@champion", SERVE_PORT + args.port_offset, env, state / "logs" / "serve.log"
    ) as (url, process):
        rss.extra["serve"] = process.pid
        post(url, bodies[0][0])  # warm-up
        load = serve_while_training(args, settings, env, corpus, url, bodies, timings, load_start)
        timings["load_training_watch_s"] = time.monotonic() - load["began"]
    runs = wait_all_final(settings, load_start - 1, deadline)
    timings["load_total_s"] = time.monotonic() - load["began"]
    memory = rss.stop()
    state_mib_before_backup = folder_mib(state)
    try:
        backup = backup_cycle(env, REPO / ".ser-state" / f"stack-load-{args.db}-backup")
    except SystemExit as exc:  # the load figures stand without it
        backup = {"error": str(exc)[-1000:]}
    return {
        "corpus_files": files,
        "fold_concurrency": args.folds,
        "queued_training": load["queued"],
        **run_figures(runs),
        "client_errors": load["errors"],
        **log_figures(state, args.db),
        "serving": serving_figures(args, load),
        "memory": memory,
        "state_folder_mib": state_mib_before_backup,
        "backup_cycle": backup,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "load_after": load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    state = REPO / ".ser-state" / f"stack-load-{args.db}"
    if state.exists():
        shutil.rmtree(state)
    env = stack_environment(args, state)
    result: dict[str, Any] = {"db": args.db, "machine": machine_info(), "load_before": load_average()}
    rss = StackRSS(state)
    try:
        result.update(measure(args, state, env, rss))
    finally:
        if rss._thread.is_alive():
            rss.stop()
        if not args.keep:
            subprocess.run([str(REPO / "infra" / "down"), "--purge"], cwd=REPO, env=env, timeout=300)
            shutil.rmtree(REPO / ".ser-state" / f"stack-load-{args.db}-backup", ignore_errors=True)
    (args.out / f"{args.db}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
