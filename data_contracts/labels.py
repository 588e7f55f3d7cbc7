"""The registered corpus names and each corpus's class names, read from its spec.

`CORPORA` lists the names of `data_contracts.corpora.SPECS`; `LABELS[corpus]` is that corpus's
`CorpusSpec.labels`, the class-index order of models trained on it. Both are views of the
registry, so a corpus registered at run time is in them. Each corpus module documents how its
own label codes map to these names; the same emotion has the same name in every corpus.
"""

from __future__ import annotations

from data_contracts.corpora import CorpusNames, SpecField

CORPORA: CorpusNames = CorpusNames()

LABELS: SpecField[tuple[str, ...]] = SpecField(lambda spec: spec.labels)
