"""Imports go one way: flows -> ser_model -> data_contracts -> ser_stack (docs/ARCHITECTURE.md);
infra/ starts the stack and runs flows as commands but never imports them; nothing imports infra/
or benchmarks/.

Each layer is imported, every submodule of it, in a fresh interpreter where the modules it must not
use raise ImportError on import; the child reports each submodule that reached a blocked module.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

CHILD = r"""
import importlib, importlib.abc, json, pkgutil, sys, traceback

package, blocked = sys.argv[1], set(sys.argv[2].split(","))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in blocked:
            raise ImportError(f"{fullname} is off limits to {package}")
        return None

sys.meta_path.insert(0, Blocker())
failures = {}
root = importlib.import_module(package)
names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".", onerror=lambda n: None)]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failures[name] = "".join(traceback.format_exception_only(exc)).strip()
print(json.dumps({"modules": names, "failures": failures}))
"""

LAYERS = {
    "ser_stack": [
        "torch",
        "prefect",
        "mlflow",
        "boto3",
        "botocore",
        "pandas",
        "flows",
        "ser_model",
        "data_contracts",
        "benchmarks",
    ],
    "data_contracts": [
        "torch",
        "torchaudio",
        "transformers",
        "prefect",
        "mlflow",
        "flows",
        "ser_model",
        "benchmarks",
    ],
    "ser_model": ["prefect", "mlflow", "boto3", "botocore", "flows", "benchmarks"],
    "flows": ["benchmarks"],
}
IMPORT_OF = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*)", re.MULTILINE)


def imported_packages(text: str) -> set[str]:
    """Top-level packages named by the import statements in ``text`` (Python source, or a shell
    script with Python in here-documents)."""
    return {name.split(".")[0] for name in IMPORT_OF.findall(text)}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_layer_imports_nothing_above_it(package, repo_root):
    done = subprocess.run(
        [sys.executable, "-c", CHILD, package, ",".join(LAYERS[package])],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["modules"][0] == package
    assert not report["failures"], (
        f"{package} imports what it must not ({', '.join(LAYERS[package])}): "
        + json.dumps(report["failures"], indent=2)
    )


def test_the_blocker_catches_a_forbidden_import(repo_root, tmp_path):
    """The check can fail: a package importing a blocked module is reported with the module's name."""
    (tmp_path / "leaky").mkdir()
    (tmp_path / "leaky" / "__init__.py").write_text("")
    (tmp_path / "leaky" / "uses_mlflow.py").write_text("import mlflow\n")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "leaky", "mlflow"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(report["failures"]) == ["leaky.uses_mlflow"]
    assert "mlflow is off limits to leaky" in report["failures"]["leaky.uses_mlflow"]


def test_infra_never_imports_flows(repo_root):
    """infra/ starts the stack, which the flows need: it reads ser_stack and runs flows only as
    commands (``python -m flows.deploy``), so no file under infra/ imports them."""
    offenders = {
        str(path.relative_to(repo_root)): sorted(
            imported_packages(path.read_text(errors="replace")) & {"flows", "benchmarks"}
        )
        for path in sorted((repo_root / "infra").rglob("*"))
        if path.is_file() and path.suffix != ".md"
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_infra_check_can_fail():
    assert imported_packages("python - <<'EOF'\nfrom flows.promote import UA_TAG\nEOF\n") == {"flows"}
    assert imported_packages("  import flows.settings as s\n.venv/bin/python -m flows.deploy\n") == {"flows"}


WAITING = r"""
import importlib, importlib.abc, json, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in ("torch", "torchaudio", "transformers"):
            raise ImportError(f"{fullname} is off limits to the flow processes that only wait")
        return None

sys.meta_path.insert(0, Blocker())
report = {}
for name in sys.argv[1].split(","):
    try:
        importlib.import_module(name)
        report[name] = None
    except ImportError as exc:
        report[name] = str(exc)
from ser_model.launch import nproc_per_node
report["nproc_per_node"] = nproc_per_node({})
report["loaded"] = sorted(m for m in ("torch", "torchaudio", "transformers") if m in sys.modules)
print(json.dumps(report))
"""


def waiting_imports(repo_root, modules: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WAITING, ",".join(modules)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_flow_processes_that_only_wait_do_not_load_torch(repo_root):
    """The ``train`` flow (waits for its folds) and the ``train-fold`` flow (launches torchrun and
    follows it) import flows/train.py and count the fold's processes without loading torch, which
    holds about 0.5 GB resident; only the fold's worker loads it. The module ser_model.data, which
    needs torch, is refused in the same interpreter: the check can fail."""
    report = waiting_imports(repo_root, ["flows.train", "flows.fold_runs", "flows.retrain", "ser_model.data"])
    assert report["flows.train"] is None, report["flows.train"]
    assert report["flows.fold_runs"] is None, report["flows.fold_runs"]
    assert report["flows.retrain"] is None, report["flows.retrain"]
    assert "off limits" in report["ser_model.data"]
    assert report["nproc_per_node"] >= 1
    assert report["loaded"] == []
