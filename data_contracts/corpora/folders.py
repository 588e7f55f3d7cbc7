"""Folder-per-label layouts as a table: ``ROOT/<label>/…/*.wav`` (or ``.flac``).

`folders_table` lists the root and builds the table `data_contracts.corpora.table` reads from a
CSV: ``path`` the file's path under the root, ``label`` its first folder, ``speaker`` the named
group ``speaker`` of `speaker_pattern` searched in the relative path (empty when the pattern does
not match or none is given: such rows are quarantined as ``empty_speaker``). Audio directly under
the root has no label folder (``empty_label``); entries the listing refused (a symlink out of the
root) become rows too, so they are quarantined with their reason. Other files are ignored.
"""

from __future__ import annotations

import re

from data_contracts.corpora.base import non_audio_category
from data_contracts.corpora.table import Table
from data_contracts.errors import IngestError
from data_contracts.source import open_source


def speaker_regex(pattern: str | None) -> re.Pattern | None:
    """The compiled `pattern`; IngestError when it is not a regular expression with a named group
    ``speaker``."""
    if pattern is None:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise IngestError(f"--speaker-pattern {pattern!r}: not a regular expression ({err})") from None
    if "speaker" not in regex.groupindex:
        raise IngestError(
            f"--speaker-pattern {pattern!r}: needs a named group speaker, e.g. '(?P<speaker>Actor_\\d+)/'"
        )
    return regex


def folders_table(root: str, speaker_pattern: str | None = None) -> Table:
    """The table of the folder-per-label layout under `root` (a folder or s3://bucket/prefix)."""
    import pandas as pd

    regex = speaker_regex(speaker_pattern)
    source = open_source(root)
    listing = source.list_files()
    paths = [f.path for f in listing.files if non_audio_category(f.path) is None]
    paths += [r.path for r in listing.refused]
    rows = []
    for path in sorted(paths):
        label = path.split("/")[0] if "/" in path else ""
        match = regex.search(path) if regex else None
        rows.append((path, label, match.group("speaker") or "" if match else ""))
    frame = pd.DataFrame(rows, columns=["path", "label", "speaker"], dtype=str)
    return Table(frame, f"{source.root} (folder table)", source, None)
