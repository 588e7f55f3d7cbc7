"""What produced a result, recorded as tags on its MLflow runs: the versions of the packages that
shape a result (the code's git commit: ser_stack.provenance.code_version)."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

from ser_stack.names import VERSION_TAG_PREFIX

PACKAGES = ("torch", "torchaudio", "transformers", "mlflow", "prefect", "pandas", "pandera", "numpy")


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """``{"ser.version.torch": "2.14.1", ...}`` for the packages that shape a result."""
    versions = {}
    for name in packages:
        try:
            versions[VERSION_TAG_PREFIX + name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[VERSION_TAG_PREFIX + name] = "not installed"
    return versions
