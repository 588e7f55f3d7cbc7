"""Error types of ser_model that callers catch as bad input, in a module without torch.

`ser_model.audio` and `ser_model.data` raise them; the `ser` command line catches them without
importing torch first, so that `ser --help` and `ser ingest` start at once. `ConfigError` lives
beside the validation of config classes (`ser_model.config_validation`, also torch-free).
"""


class AudioDecodeError(ValueError):
    """An audio file or array cannot be turned into a finite mono waveform."""


class DataSplitError(ValueError):
    """A split of the manifest cannot be trained or evaluated on (empty, unknown labels, ...)."""


class MissingSpeakersError(ValueError):
    """A model trained with speaker-level normalisation was asked to score inputs whose speakers were not given."""
