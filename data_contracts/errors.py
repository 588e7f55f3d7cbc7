"""Error types of the data contracts layer.

Every error raised on bad input derives from `DataContractError`, so callers (the `ser` CLI, the
ingest flow) catch one type and report its message. Messages name what was wrong, where, and
what was expected.
"""


class DataContractError(Exception):
    """Base class of every documented data-contract error."""


class UnknownCorpusError(DataContractError, ValueError):
    """A corpus name that is not in the registry (`data_contracts.corpora.SPECS`)."""


class CorpusLayoutError(DataContractError):
    """The corpus root does not match the corpus's official layout (or holds no utterance)."""


class SourceError(DataContractError):
    """A corpus source cannot be listed or read, or a path would leave the corpus root."""

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.reason_code = reason_code


class AudioCheckError(DataContractError):
    """An audio file failed to decode or failed a check; `reason_code` is the quarantine code."""

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.reason_code = reason_code


class ManifestError(DataContractError):
    """A manifest (or fold / quarantine table) violates its schema; the message lists the rows."""


class FoldError(DataContractError):
    """A fold protocol cannot be built from the manifest's speakers."""


class IngestError(DataContractError):
    """Ingest cannot produce a manifest (for example, every utterance was quarantined)."""
