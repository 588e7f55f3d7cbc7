"""Load on the served model: `mlflow models serve` on loopback, concurrent clients, real RAVDESS audio.

    python benchmarks/serve_load.py [--root ../shared/data/ravdess] [--out benchmarks/results/serve]
                                    [--requests 200] [--clients 8] [--model MODEL_URI] [--port 5203]

The served model is the project's fbank model (`SERConfig` defaults, RAVDESS's 8 classes, random
weights: latency does not depend on the weights) logged as the pyfunc in a temporary SQLite
store, or `--model` (e.g. `models:/ser-ravdess@champion` with MLFLOW_TRACKING_URI set). It is
served exactly as docs/SERVING.md says (`flows.serving.serve_command`, default limits).

For each request encoding, base64 FLAC bytes (`audio_base64`) and a JSON waveform (`audio` +
`sample_rate`), `--requests` requests, one RAVDESS file each (cycling through the files), are
sent by `--clients` threads at once, after one warm-up request. Reported per encoding: errors
(any reply but 200 with one prediction), latency p50 / p95 / max, throughput (requests/s and
seconds of audio per second), the request size; and the RSS of the uvicorn worker that holds
the model idle after start-up, after the warm-up, after each phase, and the peak sampled every
50 ms (the MLflow CLI process that launched it is reported apart). Figures, not assertions; the clients run on the same machine
as the server, so on few cores they compete with it for CPU.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import soundfile as sf  # noqa: E402

from benchmarks.common import PeakRSS, load_average, machine_info, machine_markdown  # noqa: E402
from ser_stack.settings import SHARED_RAVDESS  # noqa: E402

DEFAULT_ROOT = SHARED_RAVDESS
DEFAULT_OUT = REPO / "benchmarks" / "results" / "serve"
ENCODINGS = ("base64", "waveform")


def register_fbank_model(folder: Path) -> str:
    """Log the project's default fbank model for RAVDESS (random weights) as the pyfunc in a
    SQLite store under `folder`; its model URI (MLFLOW_TRACKING_URI is set to the store)."""
    import mlflow
    import torch

    from data_contracts.labels import LABELS
    from flows.pyfunc import log_pyfunc
    from ser_model.config import SERConfig
    from ser_model.model import SERModel

    torch.manual_seed(0)
    checkpoint = (
        SERModel(SERConfig(labels=LABELS["ravdess"], corpus="ravdess"))
        .eval()
        .save_pretrained(folder / "best")
    )
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    experiment = mlflow.create_experiment("serve-load", artifact_location=(folder / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        return log_pyfunc(checkpoint).model_uri


def request_bodies(files: list[Path], encoding: str) -> list[tuple[bytes, float]]:
    """One JSON body per file in the given encoding, with the file's seconds of audio."""
    bodies = []
    for path in files:
        wave, rate = sf.read(path, dtype="float32")
        if encoding == "base64":
            row = {"audio_base64": base64.b64encode(path.read_bytes()).decode("ascii")}
        else:
            row = {"audio": wave.tolist(), "sample_rate": rate}
        bodies.append((json.dumps({"dataframe_records": [row]}).encode("utf-8"), len(wave) / rate))
    return bodies


def post(url: str, body: bytes) -> tuple[bool, float, str]:
    """(answered with one prediction, seconds, error text)."""
    start = time.perf_counter()
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            ok = reply.status == 200 and len(json.loads(reply.read())["predictions"]) == 1
            return ok, time.perf_counter() - start, "" if ok else f"HTTP {reply.status}"
    except urllib.error.HTTPError as err:
        return False, time.perf_counter() - start, f"HTTP {err.code}: {err.read()[:200]!r}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return False, time.perf_counter() - start, repr(err)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between order statistics."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load_phase(url: str, bodies: list[tuple[bytes, float]], requests: int, clients: int) -> dict[str, Any]:
    """`requests` POSTs (bodies cycled) from `clients` threads; errors, latency, throughput."""
    chosen = [bodies[i % len(bodies)] for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda item: post(url, item[0]), chosen))
    wall = time.perf_counter() - start
    latencies = [seconds for _, seconds, _ in results]
    errors = [error for ok, _, error in results if not ok]
    return {
        "requests": requests,
        "clients": clients,
        "errors": len(errors),
        "first_errors": errors[:5],
        "latency_p50_ms": round(1000 * percentile(latencies, 50), 1),
        "latency_p95_ms": round(1000 * percentile(latencies, 95), 1),
        "latency_max_ms": round(1000 * max(latencies), 1),
        "latency_mean_ms": round(1000 * statistics.fmean(latencies), 1),
        "wall_s": round(wall, 2),
        "throughput_rps": round(requests / wall, 2),
        "audio_seconds_per_s": round(sum(seconds for _, seconds in chosen) / wall, 2),
        "request_kib_mean": round(statistics.fmean(len(body) for body, _ in chosen) / 1024, 1),
    }


def run(
    root: Path, out: Path, requests: int, clients: int, model_uri: str | None, port: int
) -> dict[str, Any]:
    from flows.serving import running_model_server

    files = sorted(root.glob("Actor_*/*.flac")) + sorted(root.glob("Actor_*/*.wav"))
    if not files:
        raise SystemExit(f"{root}: no Actor_*/*.flac or *.wav files; expected RAVDESS (--root)")
    files = files[:: max(1, len(files) // requests)][:requests]
    machine = machine_info()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        uri = model_uri or register_fbank_model(Path(scratch))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        bodies = {encoding: request_bodies(files, encoding) for encoding in ENCODINGS}
        with running_model_server(uri, port, env, Path(scratch) / "serve.log") as (url, process):
            rss = PeakRSS(interval_s=0.05, pid=process.pid, include_root=False)  # the workers only
            memory = {
                "mlflow_cli_process_mb": round(rss.root.memory_info().rss / 2**20, 1),
                "idle_after_start_mb": round(rss.current_mb(), 1),
            }
            warm_ok, warm_s, warm_error = post(url, bodies["base64"][0][0])
            if not warm_ok:
                raise SystemExit(f"the warm-up request failed: {warm_error}")
            memory["after_warmup_mb"] = round(rss.current_mb(), 1)
            rss.start()
            phases = {}
            for encoding in ENCODINGS:
                phases[encoding] = load_phase(url, bodies[encoding], requests, clients)
                memory[f"after_{encoding}_mb"] = round(rss.current_mb(), 1)
            rss.stop()
            memory["peak_during_load_mb"] = round(rss.peak_mb, 1)
    machine["load_average_end"] = load_average()
    machine["torch_threads_server"] = "torch default (all usable cores)"
    report = {
        "model": model_uri or "fbank, SERConfig defaults, RAVDESS labels, random weights",
        "files": len(files),
        "audio_seconds_mean": round(statistics.fmean(seconds for _, seconds in bodies["base64"]), 2),
        "warmup_request_s": round(warm_s, 2),
        "phases": phases,
        "server_rss": memory,
        "machine": machine,
    }
    (out / "serve.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "serve.md").write_text("\n".join(markdown(report)) + "\n", encoding="utf-8")
    return report


def markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        "# Serving under load",
        "",
        f"`mlflow models serve` on loopback, model: {report['model']}; {report['files']} RAVDESS files "
        f"(mean {report['audio_seconds_mean']} s), one file per request.",
        "",
        "| request encoding | requests | clients | errors | p50 ms | p95 ms | max ms | requests/s | audio s/s | request KiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for encoding, p in report["phases"].items():
        lines.append(
            f"| {encoding} | {p['requests']} | {p['clients']} | {p['errors']} | {p['latency_p50_ms']} | {p['latency_p95_ms']} "
            f"| {p['latency_max_ms']} | {p['throughput_rps']} | {p['audio_seconds_per_s']} | {p['request_kib_mean']} |"
        )
    lines += [
        "",
        "RSS of the uvicorn worker that holds the model (the MLflow CLI process that started it apart), MiB:",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in report["server_rss"].items()]
    lines += ["", "Machine:", ""] + machine_markdown(report["machine"])
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="RAVDESS root (Actor_NN/*.flac)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for serve.json and serve.md")
    parser.add_argument("--requests", type=int, default=200, help="requests per encoding")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--model", help="model URI to serve instead of a fresh fbank model")
    parser.add_argument("--port", type=int, default=5203, help="loopback port of the server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run(args.root, args.out, args.requests, args.clients, args.model, args.port)
    print((args.out / "serve.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
