"""Ingest a corpus: parse its layout, decode and check every utterance, build the tables.

`run_ingest` returns the validated manifest, the quarantine table, the fold table, a report and
the manifest fingerprint; `write_ingest_outputs` writes them to a folder and `read_ingest_outputs`
reads them back (what `ser train --manifest DIR` trains from); `report_markdown` renders the report
as the text of the ingest flow's Prefect artifact. No Prefect, MLflow or S3
writing here: the flows call these functions.

Every file under the root ends in exactly one place: a manifest row, a quarantine row, an
out-of-scope count or an excluded-by-protocol count.

A root whose speakers are too few for the corpus's fold protocol (a held-out set of four
RAVDESS actors, say) is still ingested: the manifest and quarantine are written as usual, the
fold table is empty, every manifest row's ``fold`` is missing, and the report's
``no_fold_protocol`` says why (it is null when folds were made). Such a manifest is scored
whole (``ser evaluate --split all``), never cross-validated. Among files with identical bytes, or
claiming the same utt_id, the first in path order is kept and the others are quarantined.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from data_contracts.corpora import OFFICIAL_CORPORA, parse_corpus, spec
from data_contracts.corpora.base import AudioChecks, QuarantineRow
from data_contracts.errors import FoldError, IngestError, ManifestError
from data_contracts.probing import probe_all
from data_contracts.source import CorpusSource, open_source

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("manifest.parquet", "quarantine.parquet", "folds.parquet", "report.json")

# pandas and pandera (about 1 s of imports) are imported by the functions that build tables, so
# importing this module (the flows, `ser --help`) costs only the parsers and the audio decoder


@dataclass(frozen=True)
class IngestResult:
    """Tables and report of one ingest; `fingerprint` is the manifest fingerprint."""

    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    folds: pd.DataFrame
    report: dict
    fingerprint: str


def accept(candidates, outcomes, origins=None) -> tuple[list[dict], list[QuarantineRow]]:
    """Manifest rows of the files that passed, in input order, quarantining duplicate content and
    duplicate utt_ids (the later ones). `origins[i]` (e.g. ``labels.csv row 7: ``) starts the
    reason of candidate i's quarantine row."""
    rows, quarantined = [], []
    first_by_sha, first_by_utt = {}, {}
    origins = origins or [""] * len(candidates)
    for candidate, outcome, origin in zip(candidates, outcomes, origins):
        if isinstance(outcome, QuarantineRow):
            quarantined.append(replace(outcome, reason=origin + outcome.reason))
            continue
        path, utt_id = candidate.path, candidate.utt_id
        if outcome.sha256 in first_by_sha:
            quarantined.append(
                QuarantineRow(
                    candidate.corpus,
                    path,
                    utt_id,
                    "duplicate",
                    f"{origin}duplicate_of {first_by_sha[outcome.sha256]}",
                )
            )
            continue
        if utt_id in first_by_utt:
            quarantined.append(
                QuarantineRow(
                    candidate.corpus,
                    path,
                    utt_id,
                    "duplicate_utt_id",
                    f"{origin}{path}: utt_id {utt_id} already taken by {first_by_utt[utt_id]} (different audio)",
                )
            )
            continue
        first_by_sha[outcome.sha256] = path
        first_by_utt[utt_id] = path
        rows.append(
            {
                **candidate.__dict__,
                "duration_s": outcome.duration_s,
                "sample_rate": outcome.sample_rate,
                "channels": outcome.channels,
                "sha256": outcome.sha256,
            }
        )
    return rows, quarantined


def quarantine_table(rows: list[QuarantineRow]) -> pd.DataFrame:
    """QuarantineSchema table of `rows`, sorted by path."""
    import pandas as pd

    from data_contracts.schemas import QUARANTINE_COLUMNS, validate_quarantine

    table = pd.DataFrame([r.__dict__ for r in rows], columns=list(QUARANTINE_COLUMNS))
    table = table.astype({c: "str" for c in QUARANTINE_COLUMNS if c != "utt_id"})
    table["utt_id"] = table["utt_id"].astype("str").where(table["utt_id"].notna(), None)
    return validate_quarantine(
        table.sort_values(["path", "reason_code"], kind="stable").reset_index(drop=True)
    )


def _count(series: pd.Series, order=None) -> dict[str, int]:
    from data_contracts.folds import natural_key

    counts = series.value_counts()
    keys = order if order is not None else sorted(counts.index, key=lambda k: natural_key(str(k)))
    return {str(k): int(counts.get(k, 0)) for k in keys}


def folds_or_none(manifest: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The corpus's fold table of `manifest` and None; or, when its fold protocol does not fit
    these speakers, an empty fold table and the FoldError message saying why."""
    import pandas as pd

    from data_contracts.folds import make_folds
    from data_contracts.schemas import FOLD_COLUMNS, validate_folds

    try:
        return make_folds(manifest), None
    except FoldError as err:
        empty = pd.DataFrame(
            {
                "fold": pd.Series(dtype="int64"),
                "speaker": pd.Series(dtype="str"),
                "role": pd.Series(dtype="str"),
            }
        )
        return validate_folds(empty[list(FOLD_COLUMNS)]), str(err)


def build_report(
    corpus, source, listing, parsed, manifest, quarantine, folds, fingerprint, no_fold_protocol=None
) -> dict:
    """The ingest report: counts per class, speaker and fold, every quarantined file with its
    reason, out-of-scope and excluded counts, durations, fingerprints, parser version;
    ``no_fold_protocol`` is why no fold protocol fits (None when folds were made)."""
    import pandas as pd

    from data_contracts.fingerprint import PARSER_VERSION, listing_fingerprint
    from data_contracts.folds import natural_key

    fold_info = {}
    for k, table in folds.groupby("fold"):
        roles = {
            role: sorted(table.loc[table["role"] == role, "speaker"], key=natural_key)
            for role in ("test", "valid", "train")
        }
        fold_info[str(k)] = {
            **{f"{role}_speakers": speakers for role, speakers in roles.items()},
            **{
                f"{role}_utterances": int(manifest["speaker"].isin(speakers).sum())
                for role, speakers in roles.items()
            },
        }
    durations = manifest["duration_s"]
    return {
        "corpus": corpus,
        "kind": "corpus" if corpus in OFFICIAL_CORPORA else "table",
        "labels": list(spec(corpus).labels),
        "root": source.root,
        "parser_version": PARSER_VERSION,
        "fingerprint": fingerprint,
        "source_fingerprint": listing_fingerprint(listing),
        "files_listed": len(listing.files),
        "files_refused": len(listing.refused),
        "utterances": len(manifest),
        "classes": _count(manifest["label"], spec(corpus).labels),
        "speakers": _count(manifest["speaker"]),
        "genders": _count(manifest["gender"]),
        "folds": fold_info,
        "no_fold_protocol": no_fold_protocol,
        "quarantine_counts": _count(quarantine["reason_code"]),
        "quarantined": [
            {k: (None if pd.isna(v) else v) for k, v in row.items()}
            for row in quarantine[["path", "utt_id", "reason_code", "reason"]].to_dict("records")
        ],
        "out_of_scope": dict(sorted(parsed.out_of_scope.items())),
        "excluded_by_protocol": dict(sorted(parsed.excluded.items())),
        "duration_s": {
            "total": round(float(durations.sum()), 3),
            "min": round(float(durations.min()), 3),
            "mean": round(float(durations.mean()), 3),
            "max": round(float(durations.max()), 3),
        },
        "sample_rates": _count(manifest["sample_rate"]),
        "channels": _count(manifest["channels"]),
    }


def run_ingest(
    corpus: str,
    root: str | Path | CorpusSource,
    workers: int | None = None,
    progress: bool = True,
    checks: AudioChecks | None = None,
) -> IngestResult:
    """Parse `root` in `corpus`'s layout, decode and check every candidate in `workers` threads
    (default: all cores; see `data_contracts.probing`), and build the validated manifest, quarantine, folds and report.

    checks: audio thresholds (default: the corpus spec's `audio_checks`). Raises a DataContractError subclass
    (CorpusLayoutError, SourceError, IngestError, ManifestError) on unusable input; too few
    speakers for the fold protocol is not an error (see the module doc).
    """
    source = open_source(root)
    listing = source.list_files()
    parsed = parse_corpus(corpus, source, listing)
    checks = checks or spec(corpus).audio_checks
    candidates = sorted(parsed.candidates, key=lambda c: c.path)
    logger.info(
        "%s: %d files listed, %d candidate utterances", source.root, len(listing.files), len(candidates)
    )
    outcomes = probe_all(source, candidates, checks, workers, progress, desc=f"ingest {corpus}")
    rows, rejected = accept(candidates, outcomes)
    quarantine = quarantine_table(parsed.quarantine + rejected)
    return assemble_ingest(corpus, source, listing, parsed, rows, quarantine, len(candidates))


def assemble_ingest(
    corpus, source, listing, parsed, rows, quarantine, candidates: int, fold_table=folds_or_none
) -> IngestResult:
    """The validated manifest, folds, report and fingerprint of the accepted `rows` (dicts of the
    manifest's columns but ``fold``; a table dataset's also carry ``metadata``).

    fold_table(manifest) -> (fold table, why no fold protocol fits or None). IngestError when no
    row is usable, naming the quarantine reasons."""
    if not rows:
        reasons = ", ".join(f"{k}: {v}" for k, v in _count(quarantine["reason_code"]).items()) or "none"
        raise IngestError(
            f"{source.root}: no usable {corpus} utterance ({candidates} candidates; quarantined by reason: {reasons})"
        )
    import pandas as pd

    from data_contracts.fingerprint import manifest_fingerprint
    from data_contracts.folds import fold_of_speaker
    from data_contracts.schemas import MANIFEST_COLUMNS, validate_manifest

    manifest = pd.DataFrame(rows)
    folds, no_fold_protocol = fold_table(manifest)
    if no_fold_protocol:
        logger.warning(
            "%s: no fold protocol fits (%s); the manifest can be scored whole, not cross-validated",
            source.root,
            no_fold_protocol,
        )
    manifest["fold"] = manifest["speaker"].map(fold_of_speaker(folds)).astype("Int64")
    manifest = manifest.astype({"duration_s": "float64", "sample_rate": "int64", "channels": "int64"})
    columns = list(MANIFEST_COLUMNS) + (["metadata"] if "metadata" in manifest.columns else [])
    manifest = validate_manifest(manifest[columns].reset_index(drop=True))
    fingerprint = manifest_fingerprint(manifest)
    report = build_report(
        corpus, source, listing, parsed, manifest, quarantine, folds, fingerprint, no_fold_protocol
    )
    logger.info(
        "%s: %d utterances, %d quarantined, %d folds, fingerprint %s",
        corpus,
        len(manifest),
        len(quarantine),
        folds["fold"].nunique(),
        fingerprint[:12],
    )
    return IngestResult(manifest, quarantine, folds, report, fingerprint)


def write_ingest_outputs(result: IngestResult, out_dir: str | Path) -> dict[str, Path]:
    """Write manifest.parquet, quarantine.parquet, folds.parquet and report.json under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in OUTPUT_FILES}
    result.manifest.to_parquet(paths["manifest.parquet"], index=False)
    result.quarantine.to_parquet(paths["quarantine.parquet"], index=False)
    result.folds.to_parquet(paths["folds.parquet"], index=False)
    paths["report.json"].write_text(json.dumps(result.report, indent=2, ensure_ascii=False) + "\n")
    return paths


def read_ingest_outputs(out_dir: str | Path) -> IngestResult:
    """The IngestResult that `write_ingest_outputs` wrote under `out_dir`, every table validated
    against its schema, so that training reads what ingest wrote instead of decoding the corpus
    again. The report's fingerprint must be the manifest's: a manifest edited by hand, or files
    from two ingests mixed in one folder, raise ManifestError naming the folder."""
    import pandas as pd

    from data_contracts.datasets import register_from_report
    from data_contracts.fingerprint import manifest_fingerprint
    from data_contracts.schemas import validate_folds, validate_manifest, validate_quarantine

    out = Path(out_dir)
    missing = [name for name in OUTPUT_FILES if not (out / name).is_file()]
    if missing:
        raise ManifestError(
            f"{out}: {', '.join(missing)} missing; expected the folder `ser ingest CORPUS ROOT --out DIR` writes "
            f"({', '.join(OUTPUT_FILES)})"
        )
    try:
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        tables = {
            name: pd.read_parquet(out / f"{name}.parquet") for name in ("manifest", "quarantine", "folds")
        }
    except (OSError, ValueError) as err:
        raise ManifestError(f"{out}: cannot read the ingest outputs: {err}") from err
    if not isinstance(report, dict) or not all(
        isinstance(report.get(key), str) for key in ("corpus", "root", "fingerprint")
    ):
        raise ManifestError(
            f"{out / 'report.json'}: expected a JSON object with the strings corpus, root and fingerprint"
        )
    register_from_report(report)
    manifest = validate_manifest(tables["manifest"])
    fingerprint = manifest_fingerprint(manifest)
    if fingerprint != report["fingerprint"]:
        raise ManifestError(
            f"{out}: manifest.parquet has fingerprint {fingerprint}, report.json says {report['fingerprint']}; "
            "the files come from different ingests or were edited: ingest again"
        )
    return IngestResult(
        manifest,
        validate_quarantine(tables["quarantine"]),
        validate_folds(tables["folds"]),
        report,
        fingerprint,
    )


def _table(header: tuple[str, ...], rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def report_markdown(report: dict) -> str:
    """The report as Markdown: totals, counts per class, speaker and fold, every quarantined file
    with its reason, out-of-scope and excluded counts."""
    if report.get("no_fold_protocol"):
        fold_lines = [
            f"No fold protocol fits: {report['no_fold_protocol']}. Score this set whole (`ser evaluate --split all`)."
        ]
    else:
        fold_lines = _table(
            ("fold", "test speakers", "validation speakers", "test / valid / train utterances"),
            (
                (
                    k,
                    ", ".join(f["test_speakers"]),
                    ", ".join(f["valid_speakers"]),
                    f"{f['test_utterances']} / {f['valid_utterances']} / {f['train_utterances']}",
                )
                for k, f in report["folds"].items()
            ),
        )
    lines = [
        f"# Ingest {report['corpus']}",
        "",
        f"- root: `{report['root']}`",
        f"- utterances: **{report['utterances']}**, quarantined: **{len(report['quarantined'])}**, "
        f"folds: {len(report['folds'])}, total audio: {report['duration_s']['total'] / 3600:.2f} h",
        f"- manifest fingerprint: `{report['fingerprint']}` (parser version {report['parser_version']})",
        "",
        "## Classes",
        *_table(("class", "utterances"), report["classes"].items()),
        "",
        "## Speakers",
        *_table(("speaker", "utterances"), report["speakers"].items()),
        "",
        "## Folds",
        *fold_lines,
        "",
        "## Quarantined files",
    ]
    if report["quarantined"]:
        lines += _table(
            ("path", "reason code", "reason"),
            ((q["path"], q["reason_code"], q["reason"]) for q in report["quarantined"]),
        )
    else:
        lines.append("None.")
    lines += ["", "## Out of scope and excluded by protocol"]
    scope = [("out of scope", k, v) for k, v in report["out_of_scope"].items()]
    scope += [("excluded by protocol (label)", k, v) for k, v in report["excluded_by_protocol"].items()]
    lines += _table(("kind", "category", "files"), scope) if scope else ["None."]
    return "\n".join(lines) + "\n"
