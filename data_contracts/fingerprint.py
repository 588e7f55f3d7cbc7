"""Fingerprints: what a manifest is (content) and whether a corpus root changed (cheap listing).

manifest_fingerprint = sha256( PARSER_VERSION "\\n" + join over rows sorted by utt_id of
"utt_id \\t sha256 \\t label \\n" ), hex. It depends neither on row order nor on the machine or
the place the corpus lives (paths are not part of it).

source_fingerprint = sha256 over the sorted (relative path, size, version) of every listed file
(version: mtime_ns for a local folder, ETag for S3) plus refused entries; no file is read, so a
scheduled retrain detects new, removed or changed files without decoding anything.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from data_contracts.source import CorpusSource, Listing

PARSER_VERSION = "1"


def manifest_fingerprint(manifest: pd.DataFrame) -> str:
    """Hex sha256 of the manifest's sorted (utt_id, sha256, label) rows and PARSER_VERSION."""
    rows = sorted(zip(manifest["utt_id"], manifest["sha256"], manifest["label"]))
    digest = hashlib.sha256(f"parser {PARSER_VERSION}\n".encode())
    for utt_id, sha, label in rows:
        digest.update(f"{utt_id}\t{sha}\t{label}\n".encode())
    return digest.hexdigest()


def listing_fingerprint(listing: Listing) -> str:
    """Hex sha256 of a listing: (path, size, version) per file and (path, reason) per refused entry."""
    digest = hashlib.sha256(f"parser {PARSER_VERSION}\n".encode())
    for entry in sorted(listing.files, key=lambda e: e.path):
        digest.update(f"{entry.path}\t{entry.size}\t{entry.version}\n".encode())
    for refused in sorted(listing.refused, key=lambda r: r.path):
        digest.update(f"refused\t{refused.path}\t{refused.reason_code}\n".encode())
    return digest.hexdigest()


def source_fingerprint(source: CorpusSource) -> str:
    """Hex sha256 of the source's current listing (see `listing_fingerprint`); reads no file."""
    return listing_fingerprint(source.list_files())
