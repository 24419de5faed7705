"""File writing that never leaves half a file behind, and content hashes for cache keys and metadata."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from tmdeploy.errors import TmdeployError


def atomic_write(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, then rename it into place.

    A crash or kill mid-write leaves the previous file untouched and no partial file under ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise TmdeployError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts should get the usual mode
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):  # disk full, file too large, I/O error, target is a directory, ...
            raise TmdeployError(f"cannot write {path}: {err.strerror or err}") from err
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
