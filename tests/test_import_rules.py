"""Import rules. The layers (flows -> ser_model -> data_contracts -> ser_stack, docs/ARCHITECTURE.md)
and what each may not import are import-linter contracts in pyproject.toml; here: they hold, and
they can fail. What import-linter cannot see is checked by hand: infra/ (bash scripts and a script
folder) never imports the flows, and the flow processes that only wait never load torch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.fixtures.scripts import fresh_interpreter_report

IMPORT_OF = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*)", re.MULTILINE)


def imported_packages(text: str) -> set[str]:
    """Top-level packages named by the import statements in ``text`` (Python source, or a shell
    script with Python in here-documents)."""
    return {name.split(".")[0] for name in IMPORT_OF.findall(text)}


def lint_imports(root: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--config", str(config), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_repository_keeps_its_import_contracts(repo_root):
    """The import-linter contracts of pyproject.toml (also run by infra/test before the suite)."""
    done = lint_imports(repo_root, repo_root / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 broken" in done.stdout


def test_the_contracts_catch_an_upward_and_a_forbidden_import(repo_root, tmp_path):
    """The contracts can fail: a copy of them over four toy layers, where ser_model imports flows
    (a climb) and mlflow (forbidden) and data_contracts imports torch, reports exactly those."""
    config = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["importlinter"]
    for package in config["root_packages"]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "ser_model" / "leaky.py").write_text("import mlflow\n\nimport flows\n")
    (tmp_path / "data_contracts" / "heavy.py").write_text("def load():\n    import torch\n")
    (tmp_path / "ser_stack" / "light.py").write_text("import os\n")
    (tmp_path / "contracts.toml").write_text(toml_of(config))
    done = lint_imports(tmp_path, tmp_path / "contracts.toml")
    assert done.returncode != 0, done.stdout
    report = done.stdout
    assert "ser_model.leaky -> flows" in report
    assert "ser_model is not allowed to import mlflow" in report
    assert "data_contracts is not allowed to import torch" in report
    assert "Contracts: 2 kept, 3 broken." in report, report


def toml_of(config: dict) -> str:
    """The [tool.importlinter] table as TOML (strings and lists of strings, booleans)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return "[" + ", ".join(json.dumps(x) for x in v) + "]"
        return json.dumps(v)

    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {value(v)}" for k, v in config.items() if k != "contracts"]
    for contract in config["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{k} = {value(v)}" for k, v in contract.items()]
    return "\n".join(lines) + "\n"


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


def test_flow_processes_that_only_wait_do_not_load_torch(repo_root):
    """The ``train`` flow (waits for its folds) and the ``train-fold`` flow (launches torchrun and
    follows it) import flows/train.py and count the fold's processes without loading torch, which
    holds about 0.5 GB resident; only the fold's worker loads it. The module ser_model.data, which
    needs torch, is refused in the same interpreter: the check can fail."""
    report = fresh_interpreter_report(
        WAITING, ",".join(["flows.train", "flows.fold_runs", "flows.retrain", "ser_model.data"])
    )
    assert report["flows.train"] is None, report["flows.train"]
    assert report["flows.fold_runs"] is None, report["flows.fold_runs"]
    assert report["flows.retrain"] is None, report["flows.retrain"]
    assert "off limits" in report["ser_model.data"]
    assert report["nproc_per_node"] >= 1
    assert report["loaded"] == []
