"""Decode and check many files, serially or in a pool of threads.

Threads, not processes: the work of a file is reading its bytes, hashing them (hashlib releases
the GIL on buffers over 2 KiB), decoding them (libsndfile, called through cffi, which releases
the GIL for the whole call; the bytes come back through a few Python read callbacks per file) and
two NumPy reductions (no GIL either). A thread pool starts at once and shares the imported
modules, where a pool of spawned processes re-imports them in every worker (0.6 s or more each on
a loaded machine, longer than decoding the RAVDESS subset), so more workers are never slower than
one. Threads are also safe inside a Prefect flow, where forking a process that runs threads can
deadlock.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from data_contracts.audio import AudioChecks, AudioProbe, probe_audio
from data_contracts.corpora.base import Candidate, QuarantineRow
from data_contracts.errors import AudioCheckError, SourceError
from data_contracts.source import CorpusSource


def probe_file(source: CorpusSource, candidate: Candidate, checks: AudioChecks) -> AudioProbe | QuarantineRow:
    """Read and check one candidate's audio: its AudioProbe, or the quarantine row saying why not."""
    try:
        return probe_audio(source.read_bytes(candidate.path), candidate.path, checks)
    except (SourceError, AudioCheckError) as err:
        return QuarantineRow(candidate.corpus, candidate.path, candidate.utt_id, err.reason_code, str(err))


def probe_all(
    source: CorpusSource,
    candidates: list[Candidate],
    checks: AudioChecks,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "probe",
) -> list[AudioProbe | QuarantineRow]:
    """probe_file over `candidates`, in input order: inline for one worker, else in a pool of
    `workers` threads (default: all cores), with a tqdm bar unless `progress` is False."""
    workers = workers or os.cpu_count() or 1
    outcomes = []
    with tqdm(total=len(candidates), desc=desc, unit="file", disable=not progress) as bar:
        if workers == 1 or len(candidates) < 2:
            for candidate in candidates:
                outcomes.append(probe_file(source, candidate, checks))
                bar.update()
            return outcomes
        with ThreadPoolExecutor(workers, thread_name_prefix="probe") as pool:
            for outcome in pool.map(lambda candidate: probe_file(source, candidate, checks), candidates):
                outcomes.append(outcome)
                bar.update()
    return outcomes
