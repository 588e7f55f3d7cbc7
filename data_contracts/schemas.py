"""pandera schemas of the three tables ingest produces (columns in docs/ARCHITECTURE.md).

`validate_manifest`, `validate_folds` and `validate_quarantine` validate lazily (every failure at
once) and raise `ManifestError` whose message lists each failure as row index, utt_id, column
and problem, e.g. ``row 2 (utt_id '03-01-09-01-01-01-02'): column 'label': 'bored' is not a
ravdess label``. The corpus names and each corpus's classes are read from the registry
(`data_contracts.corpora.SPECS`) when a table is validated, so a corpus registered at run time
validates like the others.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from data_contracts.errors import ManifestError
from data_contracts.labels import CORPORA, LABELS

MANIFEST_COLUMNS = (
    "utt_id",
    "corpus",
    "path",
    "speaker",
    "session",
    "gender",
    "label",
    "label_raw",
    "duration_s",
    "sample_rate",
    "channels",
    "sha256",
    "fold",
)
QUARANTINE_COLUMNS = ("corpus", "path", "utt_id", "reason_code", "reason")
FOLD_COLUMNS = ("fold", "speaker", "role")
ROLES = ("train", "valid", "test")


def _registered(corpus: pd.Series) -> pd.Series:
    return corpus.isin(list(CORPORA))


class ManifestSchema(pa.DataFrameModel):
    """One row per utterance; `corpus` must be a registered corpus and `label` one of its classes."""

    utt_id: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    corpus: Series[str]
    path: Series[str] = pa.Field(str_length={"min_value": 1})
    speaker: Series[str] = pa.Field(str_length={"min_value": 1})
    session: Series[str] = pa.Field(str_length={"min_value": 1})
    gender: Series[str] = pa.Field(isin=["F", "M", "U"])
    """F or M; U (unknown) in table datasets without a gender column."""
    label: Series[str]
    label_raw: Series[str]
    duration_s: Series[float] = pa.Field(gt=0)
    sample_rate: Series[int] = pa.Field(gt=0)
    channels: Series[int] = pa.Field(ge=1)
    sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$")
    fold: Series[pd.Int64Dtype] = pa.Field(ge=0, nullable=True, coerce=True)
    """The test fold of the row's speaker; missing (<NA>) in every row of a manifest that no fold
    protocol fits (a held-out set with too few speakers), which can be scored but not cross-validated."""
    metadata: Series[str] | None
    """Table datasets only: the table's other columns of the row, as a JSON object."""

    @pa.check("corpus", name="registered_corpus")
    def registered_corpus(cls, corpus: Series[str]) -> Series[bool]:
        return _registered(corpus)

    @pa.dataframe_check
    def label_in_corpus(cls, df: pd.DataFrame) -> pd.Series:
        if not {"corpus", "label"} <= set(df.columns):
            return pd.Series(True, index=df.index)
        return pd.Series(
            [label in LABELS.get(corpus, ()) for corpus, label in zip(df["corpus"], df["label"])],
            index=df.index,
        )

    class Config:
        strict = True


class FoldSchema(pa.DataFrameModel):
    """One row per (fold, speaker): the speaker's role in that fold."""

    fold: Series[int] = pa.Field(ge=0)
    speaker: Series[str] = pa.Field(str_length={"min_value": 1})
    role: Series[str] = pa.Field(isin=list(ROLES))

    class Config:
        strict = True
        unique = ["fold", "speaker"]


class QuarantineSchema(pa.DataFrameModel):
    """One row per file (or label-file line) kept out of the manifest, with its reason."""

    corpus: Series[str]
    path: Series[str]
    utt_id: Series[str] = pa.Field(nullable=True)
    reason_code: Series[str] = pa.Field(str_length={"min_value": 1})
    reason: Series[str] = pa.Field(str_length={"min_value": 1})

    @pa.check("corpus", name="registered_corpus")
    def registered_corpus(cls, corpus: Series[str]) -> Series[bool]:
        return _registered(corpus)

    class Config:
        strict = True


def _describe(errors: pa.errors.SchemaErrors, df: pd.DataFrame, table: str) -> str:
    """One line per failure: row index, utt_id when the table has one, column, problem."""
    lines = []
    seen = set()

    def utt(index) -> str:
        return f" (utt_id {df.loc[index, 'utt_id']!r})" if "utt_id" in df.columns else ""

    for case in errors.failure_cases.itertuples(index=False):
        index = case.index
        if case.check == "label_in_corpus":
            if (index, "label") in seen:
                continue
            seen.add((index, "label"))
            row = df.loc[index]
            lines.append(
                f"row {index}{utt(index)}: column 'label': {row['label']!r} is not a "
                f"{row['corpus']} label; expected one of {LABELS.get(row['corpus'], ())}"
            )
            continue
        if index is None or pd.isna(index):
            problem = (
                f"column {case.failure_case!r} is missing"
                if case.check == "column_in_dataframe"
                else f"{case.check}: {case.failure_case!r}"
            )
            lines.append(f"{table}: {problem}")
            continue
        if case.check == "field_uniqueness":
            problem = "duplicate value"
        elif case.check == "registered_corpus":
            problem = f"not a registered corpus (expected one of {', '.join(CORPORA)})"
        else:
            problem = f"fails {case.check}"
        lines.append(
            f"row {index}{utt(index)}: column {case.column!r}: value {case.failure_case!r}: {problem}"
        )
    shown = "\n  ".join(lines[:50])
    more = f"\n  ... and {len(lines) - 50} more" if len(lines) > 50 else ""
    return f"{table} violates its schema ({len(lines)} problems):\n  {shown}{more}"


def _validate(schema: type[pa.DataFrameModel], df: pd.DataFrame, table: str) -> pd.DataFrame:
    try:
        return schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as errors:
        raise ManifestError(_describe(errors, df, table)) from None


def validate_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """`df` if it satisfies ManifestSchema; ManifestError naming every offending row otherwise."""
    return _validate(ManifestSchema, df, "manifest")


def validate_folds(df: pd.DataFrame) -> pd.DataFrame:
    """`df` if it satisfies FoldSchema; ManifestError otherwise."""
    return _validate(FoldSchema, df, "fold table")


def validate_quarantine(df: pd.DataFrame) -> pd.DataFrame:
    """`df` if it satisfies QuarantineSchema; ManifestError otherwise."""
    return _validate(QuarantineSchema, df, "quarantine table")
