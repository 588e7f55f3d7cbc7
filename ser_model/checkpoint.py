"""Crash-safe training checkpoints: a `save_pretrained` folder plus the training state.

A checkpoint folder (`<out>/checkpoints/last`) holds what inference needs (`config.json`,
`model.safetensors`, `labels.json`) and `training_state.pt`: optimiser, scheduler, sampler
position, RNG states, epoch, best score and history, written with `torch.save` from tensors and
plain Python values only, so that it loads with `torch.load(weights_only=True)`.

Atomic replacement: the new folder is written beside the old one as `.<name>.tmp`, every file
and the folder are fsync'ed, then `<name>` is renamed to `.<name>.old`, the new folder renamed to
`<name>`, and the old one removed. A failure while writing leaves `<name>` untouched; a crash
between the two renames leaves `.<name>.old`, which `resolve_checkpoint` falls back to.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "STATE_FILE",
    "write_folder_atomically",
    "save_checkpoint",
    "resolve_checkpoint",
    "load_training_state",
    "capture_rng_state",
    "restore_rng_state",
]

STATE_FILE = "training_state.pt"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def write_folder_atomically(folder: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Replace `folder` by the folder `write(tmp)` fills, so that readers see either the old
    complete folder or the new complete one (see the module docstring)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def save_checkpoint(folder: str | os.PathLike, model: Any, state: Mapping[str, Any]) -> Path:
    """Atomically write `model.save_pretrained(folder)` plus `state` as `training_state.pt`."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        torch.save(dict(state), tmp / STATE_FILE)

    return write_folder_atomically(folder, write)


def resolve_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The complete checkpoint at `folder`, its `.old` twin after a crash mid-swap, or None."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(f".{folder.name}.old")):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def load_training_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The training state of a checkpoint folder (tensors and plain values; weights_only)."""
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def capture_rng_state(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """Every random state a training step draws from: Python, NumPy, torch CPU and CUDA, and the
    named torch generators (EAM, SupCon views), as tensors and plain values."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": json.dumps(random.getstate()),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: generator.get_state() for name, generator in generators.items()},
    }


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    missing = sorted(generators.keys() - state["generators"].keys())
    if missing:
        raise ValueError(
            f"checkpoint RNG state lacks generators {missing}; it holds {sorted(state['generators'])}"
        )
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
