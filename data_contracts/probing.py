"""Decode and check many files, serially or in a pool of worker processes.

Workers are started with the ``spawn`` method: forking a process that runs threads (a Prefect
flow, a progress-bar monitor) can deadlock, and decoding from memory calls back into Python on
every read, so a thread pool would serialise on the GIL. This module imports no pandas, so a
spawned worker starts quickly.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from data_contracts.audio import AudioChecks, AudioProbe, probe_audio
from data_contracts.corpora.base import Candidate, QuarantineRow
from data_contracts.errors import AudioCheckError, SourceError
from data_contracts.source import CorpusSource

_worker_state: dict = {}


def probe_file(source: CorpusSource, candidate: Candidate, checks: AudioChecks) -> AudioProbe | QuarantineRow:
    """Read and check one candidate's audio: its AudioProbe, or the quarantine row saying why not."""
    try:
        return probe_audio(source.read_bytes(candidate.path), candidate.path, checks)
    except (SourceError, AudioCheckError) as err:
        return QuarantineRow(candidate.corpus, candidate.path, candidate.utt_id, err.reason_code, str(err))


def _init_worker(source: CorpusSource, checks: AudioChecks) -> None:
    _worker_state.update(source=source, checks=checks)


def _probe_in_worker(candidate: Candidate) -> AudioProbe | QuarantineRow:
    return probe_file(_worker_state["source"], candidate, _worker_state["checks"])


def probe_all(
    source: CorpusSource,
    candidates: list[Candidate],
    checks: AudioChecks,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "probe",
) -> list[AudioProbe | QuarantineRow]:
    """probe_file over `candidates`, in input order: inline for one worker, else in `workers`
    spawned processes (default: all cores), with a tqdm bar unless `progress` is False."""
    workers = workers or os.cpu_count() or 1
    outcomes = []
    with tqdm(total=len(candidates), desc=desc, unit="file", disable=not progress) as bar:
        if workers == 1 or len(candidates) < 2:
            for candidate in candidates:
                outcomes.append(probe_file(source, candidate, checks))
                bar.update()
            return outcomes
        chunk = max(1, len(candidates) // (workers * 16))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(source, checks)) as pool:
            for outcome in pool.map(_probe_in_worker, candidates, chunksize=chunk):
                outcomes.append(outcome)
                bar.update()
    return outcomes
