"""The one atomic file write of the project, in the lowest layer so that every layer can use it."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(
    path: str | os.PathLike, data: bytes | str, mode: int = 0o666, durable: bool = True
) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` so that a reader sees the old file or the new one,
    never a part: through a temporary file beside it, named by this process (two processes may
    write the same file at once), fsync'ed, then ``os.replace``. ``mode``: the file's permissions (less the umask)
    (0o600 for secrets), set before any byte is written. ``durable=False`` skips the fsync, for
    caches that can be rebuilt after a crash. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
