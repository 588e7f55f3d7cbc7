"""The fold-launch contract: how one fold's training is started, what it leaves behind, and how
its exit is read. Torch-free (the flows import it without loading torch); the worker
(ser_model/worker.py) and the train flow (flows/train.py) both import it, so neither side can
drift from the other.

The job. A :class:`FoldJob` names the worker's inputs as local files (config JSON, manifest and
fold Parquet, the audio root) and its fold folder. :func:`worker_command` is the command line,
for N > 1 processes :func:`torchrun_command`'s:

    python -m torch.distributed.run --standalone --nproc_per_node=N -m ser_model.worker \\
        --config cfg.json --manifest m.parquet --folds f.parquet --fold K --audio-root DIR --out DIR \\
        [--feature-cache DIR]

(``--nnodes``/``--rdzv-endpoint`` instead of ``--standalone`` for several machines:
:func:`torchrun_command`'s ``rendezvous``); for one process, ``python -m ser_model.worker ...``
with the same arguments, without a launcher. ``--feature-cache``: the folder of the frozen-backbone
feature cache (``ser_model.feature_cache``; without it, ``<out>/../feature-cache``); the train flow
passes a folder shared by every run on the machine and copies its key folders to and from S3
(flows/feature_store.py).

The fold folder (``--out``, named :func:`fold_folder_name`), the one channel from worker to flow:

    metrics.jsonl        one JSON object per finished epoch, appended as training goes
    result.json          written last, only on success: selected epoch, valid/test metrics
    times.json           written by the launcher: when training started and ended (ms)
    checkpoints/last     exact-resume state (a rerun with the same folder continues)
    best/                the selected epoch's model (``save_pretrained`` folder: :data:`CHECKPOINT_FILES`)

Exit codes: 0 done; :data:`BAD_DATA_EXIT` bad data and :data:`BAD_CONFIG_EXIT` bad arguments or
configuration, both never retried (:class:`NotRetriedError`); anything else is an
infrastructure failure worth a retry (:class:`WorkerInfraError`: killed, out of memory, lost peer).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ser_model.allocator import heap_env
from ser_stack.process_settings import ProcessSettings

RELEASE_FOLD = -1
"""The fold number of the release model: trained on every speaker, validated on held-out ones."""
BAD_CONFIG_EXIT = 2
"""The worker refused its arguments or configuration (not retried); the `ser` CLI exits with it on any bad input."""
BAD_DATA_EXIT = 3
"""The worker refused its data: empty split, unreadable audio, unknown labels, fold not in the table (not retried)."""

RESULT_FILE = "result.json"
FOLD_RESULTS_FILE = "fold-results.json"
"""In a release's folder: the result.json of its folds, ``{"<k>": {...}}``, handed over by what
launched the release once its folds had ended (the train flow: the folds may have run on other
machines), read beside the fold folders ``fold-<k>`` (ser_model.calibration.fold_results_beside)."""
METRICS_FILE = "metrics.jsonl"
TIMES_FILE = "times.json"
BEST_FOLDER = "best"

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
BACKBONE_CONFIG_FILE = "backbone_config.json"
CHECKPOINT_FILES = (
    f"{CONFIG_FILE}, {WEIGHTS_FILE}, {LABELS_FILE} and, for an hf backbone, {BACKBONE_CONFIG_FILE}"
)
"""What a checkpoint folder (``SERModel.save_pretrained``; ``best/``, ``release/best``) holds: the
SERConfig, the weights, the class names and the transformers config of an hf backbone."""

WORKER_MODULE = "ser_model.worker"
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|AUTH|API_KEY", re.IGNORECASE)
TORCHRUN_EXITCODE = re.compile(r"exitcode\s*:\s*(-?\d+)")


@dataclass(frozen=True)
class WorkerFlag:
    """One flag of the worker's command line: ``flag`` carries the :class:`FoldJob` attribute ``field``."""

    flag: str
    field: str
    help: str
    type: type = str
    required: bool = True
    metavar: str | None = None


WORKER_FLAGS: tuple[WorkerFlag, ...] = (
    WorkerFlag("--config", "config_path", "SERConfig JSON file"),
    WorkerFlag("--manifest", "manifest_path", "manifest Parquet file (docs/ARCHITECTURE.md)"),
    WorkerFlag("--folds", "folds_path", "fold table Parquet file"),
    WorkerFlag("--fold", "fold", f"fold to train; {RELEASE_FOLD} trains the release model", type=int),
    WorkerFlag("--audio-root", "audio_root", "corpus root the manifest paths are relative to"),
    WorkerFlag("--out", "out_dir", f"output folder (checkpoints, {METRICS_FILE}, {RESULT_FILE})"),
    WorkerFlag(
        "--feature-cache",
        "feature_cache_dir",
        "folder of the frozen-backbone feature cache (default: <out>/../feature-cache; ser_model.feature_cache)",
        required=False,
        metavar="DIR",
    ),
    WorkerFlag(
        "--init",
        "init_dir",
        "model folder to start from (ser_model.warm_start; default: from scratch)",
        required=False,
        metavar="DIR",
    ),
    WorkerFlag(
        "--init-source",
        "init_source",
        "what the user named as --init (a models:/ URI), recorded in result.json (default: the folder)",
        required=False,
        metavar="URI",
    ),
)
"""The worker's flags, read by :meth:`FoldJob.worker_args` (the launcher's side) and
``ser_model.worker.build_parser`` (the worker's side): the one list of them."""


def fold_folder_name(fold: int) -> str:
    """``fold-<k>``, or ``release`` for :data:`RELEASE_FOLD`: the fold folder and the MLflow run name."""
    return "release" if fold == RELEASE_FOLD else f"fold-{fold}"


class NotRetriedError(RuntimeError):
    """The worker refused its inputs: retrying with the same inputs cannot help."""


class BadDataError(NotRetriedError):
    """The worker rejected its data (exit :data:`BAD_DATA_EXIT`)."""


class BadConfigError(NotRetriedError):
    """The worker rejected its arguments or configuration (exit :data:`BAD_CONFIG_EXIT`)."""


class WorkerInfraError(RuntimeError):
    """The worker died for another reason (killed, out of memory, ...): worth a retry."""


def retry_unless_refused(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition (Prefect's ``retry_condition_fn`` signature): retry any failure except
    refused inputs (:class:`NotRetriedError`), which fail the same way every time."""
    try:
        state.result()
    except NotRetriedError:
        return False
    except Exception:
        return True
    return True


@dataclass(frozen=True)
class FoldJob:
    """Everything one fold's worker needs, as local paths. ``feature_cache_dir``: the worker's
    ``--feature-cache`` (None: the worker's default, beside the fold folder). ``init_dir``: the
    model folder to start from (None: from scratch), ``init_source`` what the user named it."""

    corpus: str
    fold: int
    config_path: Path
    manifest_path: Path
    folds_path: Path
    audio_root: str
    out_dir: Path
    epochs: int
    feature_cache_dir: Path | None = None
    init_dir: Path | None = None
    init_source: str | None = None

    @property
    def name(self) -> str:
        return fold_folder_name(self.fold)

    def worker_args(self) -> list[str]:
        """The worker's arguments (:data:`WORKER_FLAGS`; an optional one left out when None)."""
        args: list[str] = []
        for flag in WORKER_FLAGS:
            value = getattr(self, flag.field)
            if value is not None or flag.required:
                args += [flag.flag, str(value)]
        return args


def nproc_per_node(env: dict[str, str] | None = None) -> int:
    """Worker processes per fold: ``SER_NPROC_PER_NODE`` of ``env`` (default: this process's) if
    set, else one per visible CUDA device, else one CPU process. ValueError naming a bad value."""
    return ProcessSettings.from_env(env).nproc_per_node or max(1, cuda_device_count())


def cuda_device_count() -> int:
    """CUDA devices the worker will see (its environment: :func:`worker_env`), counted by torch in
    a short child process, so that the flow process that launches a fold and follows it never loads
    torch (about 0.5 GB resident while it only waits). Raises WorkerInfraError with the child's
    output when torch cannot count them."""
    code = "import torch; print(torch.cuda.device_count())"
    done = subprocess.run(
        [sys.executable, "-c", code], env=worker_env(), capture_output=True, text=True, timeout=300
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].isdigit():
        raise WorkerInfraError(
            f"counting CUDA devices with torch failed (exit {done.returncode}):\n{(done.stderr or done.stdout)[-2000:]}"
        )
    return int(lines[-1])


def worker_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: ours without credentials (it reads only local files), with the
    heap policy's start-up settings (ser_model/allocator.py `heap_env`)."""
    env = dict(os.environ if env is None else env)
    clean = {k: v for k, v in env.items() if not SECRET_NAME.search(k)}
    clean["PYTHONUNBUFFERED"] = "1"
    return heap_env(clean)


def torchrun_command(
    nproc: int,
    worker_args: list[str],
    module: str = WORKER_MODULE,
    rendezvous: tuple[int, int, str] | None = None,
) -> list[str]:
    """torchrun with this interpreter. Without ``rendezvous``: ``--standalone`` (a free local
    rendezvous port, so folds of two flows can run at once). With ``(nnodes, node_rank,
    host:port)``: a c10d rendezvous at that address shared by ``nnodes`` launchers."""
    if rendezvous is None:
        where = ["--standalone"]
    else:
        nnodes, node_rank, endpoint = rendezvous
        where = [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *worker_args,
    ]


def worker_command(
    nproc: int,
    worker_args: list[str],
    module: str = WORKER_MODULE,
    rendezvous: tuple[int, int, str] | None = None,
) -> list[str]:
    """The command that runs one fold's worker: for one process on one machine, the worker itself
    (``python -m ser_model.worker ...``: it trains alone, so a torchrun launcher would only add
    its own interpreter with torch loaded, about 0.5 GB resident); else :func:`torchrun_command`."""
    if nproc == 1 and rendezvous is None:
        return [sys.executable, "-m", module, *worker_args]
    return torchrun_command(nproc, worker_args, module, rendezvous)


def worker_exit_code(returncode: int, output_tail: str) -> int:
    """The worker's own exit code. torchrun exits 1 whatever its worker returned and prints
    the root cause as ``exitcode  : <n>``: take that when present."""
    if returncode in (0, BAD_DATA_EXIT):
        return returncode
    codes = [int(c) for c in TORCHRUN_EXITCODE.findall(output_tail)]
    return codes[-1] if codes else returncode


def finished_epochs(out_dir: Path) -> int:
    """Lines in the fold folder's metrics.jsonl: the epochs finished so far (0 before the first)."""
    path = out_dir / METRICS_FILE
    if not path.exists():
        return 0
    return sum(1 for row in path.read_text(encoding="utf-8").splitlines() if row.strip())


def run_worker(
    job: FoldJob,
    emit: Callable[[str], None],
    on_epoch: Callable[[int], None] = lambda n: None,
    module: str = WORKER_MODULE,
    nproc: int | None = None,
    cwd: Path | None = None,
) -> Path:
    """Run one fold's worker (:func:`worker_command`), passing each output line to ``emit`` and the
    number of finished epochs to ``on_epoch`` as metrics.jsonl grows. Returns result.json.

    Raises BadDataError, BadConfigError (not retried) or WorkerInfraError (retry), each with
    the log tail.
    """
    job.out_dir.mkdir(parents=True, exist_ok=True)
    command = worker_command(nproc or nproc_per_node(), job.worker_args(), module)
    tail: deque[str] = deque(maxlen=60)
    epochs_seen = -1
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            emit(line)
            done = finished_epochs(job.out_dir)
            if done != epochs_seen:
                epochs_seen = done
                on_epoch(done)
        returncode = process.wait()
    text = "\n".join(tail)
    code = worker_exit_code(returncode, text)
    what = f"{job.corpus} {job.name}"
    if code == 0:
        result = job.out_dir / RESULT_FILE
        if not result.exists():
            raise WorkerInfraError(f"{what}: worker exited 0 but wrote no {result}")
        return result
    if code == BAD_DATA_EXIT:
        raise BadDataError(f"{what}: the worker rejected the data (exit {code}, not retried):\n{text}")
    if code == BAD_CONFIG_EXIT:
        raise BadConfigError(
            f"{what}: the worker rejected its arguments or config (exit {code}, not retried):\n{text}"
        )
    raise WorkerInfraError(
        f"{what}: worker failed with exit code {code} (will retry; resumes from its last checkpoint):\n{text}"
    )


def write_fold_times(out_dir: Path, start_ms: int, end_ms: int) -> None:
    """Record when the fold's training ran, so its tracking run can show the real span."""
    (out_dir / TIMES_FILE).write_text(json.dumps({"start_ms": start_ms, "end_ms": end_ms}))


def fold_times(out_dir: Path) -> tuple[int | None, int | None]:
    """(start, end) in ms recorded by :func:`write_fold_times`, or (None, None) when not recorded."""
    path = out_dir / TIMES_FILE
    if not path.exists():
        return None, None
    times = json.loads(path.read_text())
    return int(times["start_ms"]), int(times["end_ms"])


def read_result(out_dir: Path) -> dict[str, Any]:
    """The fold folder's result.json (present only once the fold finished)."""
    return json.loads((out_dir / RESULT_FILE).read_text(encoding="utf-8"))
