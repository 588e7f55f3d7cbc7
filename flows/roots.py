"""Where a dataset lives: the one place that finds a corpus root or a table dataset's table,
when a flow runs.

A flow run looks, in this order, at:

1. its parameter ``root`` (``prefect deployment run ingest-iemocap --param root=/data/IEMOCAP``);
2. the Prefect Variable ``ser-root-<corpus>``, set once for every worker and shown in the
   Prefect UI under Variables (``prefect variable set ser-root-iemocap /data/IEMOCAP``, add
   ``--overwrite`` to change it);
3. the worker's environment variable ``SER_ROOT_<CORPUS>`` (the environment ``infra/up``
   started the worker with, not the shell that runs ``prefect deployment run``);
4. for RAVDESS only, ``../shared/data/ravdess`` beside the repository when it exists.

Nothing is read at deploy time, so a root set or changed later applies to the next run. A root
is a local folder or ``s3://bucket/prefix``; when none is found the error names every place
looked at and how to set each.

A table dataset (`data_contracts.corpora.table`) is found the same way, its "root" being its
table (``/data/calls/labels.csv`` or ``s3://…/labels.csv``): the ``ingest-table`` flow sets the
Prefect Variable ``ser-root-<name>`` to the source it ingested (:func:`remember_source`), and a
table dataset is *registered* by having that variable (:func:`registered_datasets`), which is how
the nightly retrain finds it.

A published manifest version's root is the one recorded at ingest unless a flow is given another
(:func:`manifest_root`); a worker reads an ``s3://`` root through a local copy of the manifest's
files (:func:`local_audio_root`). Both serve flows/manifest_version.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_contracts.datasets import resolve_dataset
from data_contracts.staging import cache_from_env, stage_audio
from flows.storage import DataBucket, read_latest
from ser_stack.names import ROOT_VARIABLE_PREFIX, root_variable_name
from ser_stack.process_settings import ProcessSettings, corpus_root_variable
from ser_stack.settings import SHARED_RAVDESS

if TYPE_CHECKING:
    import pandas as pd


class CorpusRootNotFound(LookupError):
    """No place named a root for the corpus; the message lists each place and how to set it."""


def root_env_var(corpus: str) -> str:
    """``SER_ROOT_<CORPUS>``, e.g. ``SER_ROOT_MSP_IMPROV``."""
    return corpus_root_variable(resolve_dataset(corpus).name)


def root_variable(corpus: str) -> str:
    """Name of the Prefect Variable holding the dataset's root or table: ``ser-root-<dataset>``."""
    return root_variable_name(resolve_dataset(corpus).name)


def remember_source(dataset: str, source: str) -> None:
    """Set the Prefect Variable ``ser-root-<dataset>`` to `source` (overwriting it)."""
    from prefect.variables import Variable

    Variable.set(root_variable(dataset), source, overwrite=True)


def read_root_variable_names() -> list[str]:
    """The names of the Prefect Variables ``ser-root-*`` on the Prefect API in use."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [v.name for v in client.read_variables() if v.name.startswith(ROOT_VARIABLE_PREFIX)]


def registered_datasets(read_names: Callable[[], list[str]] = read_root_variable_names) -> list[str]:
    """The table datasets registered on the Prefect API (a ``ser-root-<name>`` variable whose
    name is no corpus's), sorted; variables whose name is no dataset name are ignored."""
    names = []
    for variable in read_names():
        name = variable[len(ROOT_VARIABLE_PREFIX) :]
        try:
            if resolve_dataset(name).is_table:
                names.append(name)
        except ValueError:
            continue
    return sorted(names)


def read_prefect_variable(name: str) -> str | None:
    """The value of the Prefect Variable ``name`` on the Prefect API in use, or None when unset."""
    from prefect.variables import Variable

    value = Variable.get(name, default=None)
    return None if value in (None, "") else str(value)


def configured_roots(
    corpus: str, read_variable: Callable[[str], str | None] = read_prefect_variable
) -> list[tuple[str, str | None]]:
    """Places 2-4 of the module doc, in order, as ``(place, value or None)``."""
    places = [
        (f"the Prefect variable {root_variable(corpus)}", read_variable(root_variable(corpus))),
        (
            f"the worker's environment variable {root_env_var(corpus)}",
            ProcessSettings.from_env().corpus_roots.get(root_env_var(corpus)),
        ),
    ]
    if corpus == "ravdess":
        shared = SHARED_RAVDESS.resolve()
        places.append(
            (f"the RAVDESS copy beside the repository ({shared})", str(shared) if shared.is_dir() else None)
        )
    return places


def configured_root(
    corpus: str, read_variable: Callable[[str], str | None] = read_prefect_variable
) -> tuple[str, str] | None:
    """``(root, place)`` from the first of places 2-4 that names a root, or None."""
    return first_root(configured_roots(corpus, read_variable))


def first_root(places: list[tuple[str, str | None]]) -> tuple[str, str] | None:
    return next(((value, place) for place, value in places if value), None)


def normalise_root(root: str) -> str:
    """An ``s3://`` root unchanged; a local folder as an absolute path (``~`` expanded)."""
    return root if "://" in root else str(Path(root).expanduser().resolve())


def resolve_root(
    corpus: str, root: str | None, read_variable: Callable[[str], str | None] = read_prefect_variable
) -> tuple[str, str]:
    """``(root, place)``: the parameter ``root`` if given, else the first configured root.

    Raises CorpusRootNotFound naming every place looked at and how to set it."""
    if root:
        return normalise_root(root), "the flow parameter root"
    places = configured_roots(corpus, read_variable)
    found = first_root(places)
    if found is not None:
        return normalise_root(found[0]), found[1]
    looked = ["the flow parameter root (not given)", *(f"{place} (not set)" for place, _ in places)]
    raise CorpusRootNotFound(
        f"no corpus root for {corpus}; looked at {'; '.join(looked)}. Set one of them to a folder in the "
        f"{corpus} layout or s3://bucket/prefix: `--param root=DIR` on this run, or once for every run "
        f"`prefect variable set {root_variable(corpus)} DIR` (see flows/roots.py)"
    )


def manifest_root(
    corpus: str, fingerprint: str, report: dict[str, Any], root: str | None, bucket: DataBucket | None = None
) -> str:
    """The root a manifest version's paths are relative to (a folder or s3://): ``root`` if given,
    else the root recorded at ingest (in ``latest`` while it names this version, since a
    re-publication from another root moves it; else in the version's report), else the configured
    one. Raises ValueError naming how to set one when none is a folder or s3://."""
    if not root:
        pointer = read_latest(corpus, bucket) or {}
        recorded = pointer.get("root") if pointer.get("fingerprint") == fingerprint else None
        root = recorded or report.get("root") or (configured_root(corpus) or (None,))[0]
    if not root or not (str(root).startswith("s3://") or Path(root).is_dir()):
        raise ValueError(
            f"audio root {root!r} of {corpus} is neither a folder nor s3://; pass root=DIR or set the Prefect variable {root_variable(corpus)}"
        )
    return str(root)


def local_audio_root(manifest: pd.DataFrame, root: str, fingerprint: str, state_dir: Path) -> str:
    """The folder a worker reads the manifest's audio from: ``root`` itself when it is a folder;
    for an ``s3://`` root, the manifest's files staged into the audio cache under ``state_dir``
    (sha256-verified, kept between runs; ``data_contracts.staging``)."""
    if not root.startswith("s3://"):
        return root
    cache, limit = cache_from_env(state_dir / "audio-cache")
    return str(stage_audio(manifest, root, cache, fingerprint, limit))
