"""Data contracts: corpus specs and parsers, audio checks, pandera schemas, fold protocols, fingerprints.

Imports no torch, torchaudio, transformers, prefect or mlflow. Entry points:
`data_contracts.corpora.SPECS` (one `CorpusSpec` per corpus), `data_contracts.ingest.run_ingest`,
`data_contracts.table_ingest.run_table_ingest` (your own recordings, listed in a table),
`data_contracts.datasets.resolve_dataset` (a corpus or a table dataset, by name),
`data_contracts.schemas.validate_manifest`,
`data_contracts.folds.make_folds` / `fold_rows_by_role`, `data_contracts.fingerprint`.
"""
