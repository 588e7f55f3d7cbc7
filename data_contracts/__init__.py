"""Data contracts: corpus specs and parsers, audio checks, pandera schemas, fold protocols, fingerprints.

Imports no torch, torchaudio, transformers, prefect or mlflow. Entry points:
`data_contracts.corpora.SPECS` (one `CorpusSpec` per corpus), `data_contracts.ingest.run_ingest`,
`data_contracts.schemas.validate_manifest`,
`data_contracts.folds.make_folds` / `fold_rows_by_role`, `data_contracts.fingerprint`.
"""
