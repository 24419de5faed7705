"""File writing that never leaves half a file behind, and content hashes for cache keys and metadata.

What is guaranteed for every file tmdeploy writes (see the README's Safety section):

- it is written to a temporary file beside the target and renamed into place, so an interrupt or a kill
  leaves the previous file intact and no partial file under the target's name;
- the target is a regular file or does not exist yet: a device node, a FIFO, a socket or a directory
  under that name is refused, never replaced (``--out /dev/null`` as root would replace ``/dev/null``);
- the target is never one of the command's input files (the same path, a symbolic or a hard link);
- the temporary name fits the file system's name limit, however long the target's name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path

from tmdeploy.errors import TmdeployError, UsageError

_TEMP_SUFFIX = ".tmp"
_RANDOM_CHARS = 8  # what mkstemp/mkdtemp add between prefix and suffix


def check_output(path, *sources, option: str | None = None) -> Path:
    """Refuse a target that is not a regular file, or that is one of ``sources`` (inputs, by any name).

    Called before the work starts, so a bad target fails at once; :func:`atomic_write` calls it again.
    """
    path = Path(path)
    what = f"{option} {path}" if option else str(path)
    try:
        st = path.stat()  # follows symbolic links: what a write would reach
    except FileNotFoundError:
        return path
    except OSError as err:
        raise TmdeployError(f"cannot write {path}: {err.strerror or err}") from err
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} is a directory; give a file name")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{what} is not a regular file (a device, FIFO or socket); refusing to replace it")
    for source in sources:
        if source is None:
            continue
        try:
            same = os.path.samefile(path, source)
        except OSError:
            continue
        if same:
            raise UsageError(f"{what} is the input file {source}; refusing to overwrite it")
    return path


def check_output_dir(directory, names=(), *sources, option: str | None = None) -> Path:
    """Refuse an output folder that exists and is not a directory (a file, ``/dev/null``), or whose files
    ``names`` :func:`check_output` refuses; called before the work starts, so nothing runs to fail at the end."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{option + ' ' if option else ''}{directory} exists and is not a directory")
    for name in names:
        check_output(directory / name, *sources, option=option)
    return directory


def temp_prefix(name: str, directory) -> str:
    """``.NAME.`` for temporary files beside ``NAME``, cut so the whole temporary name fits NAME_MAX."""
    try:
        name_max = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    room = name_max - len(_TEMP_SUFFIX) - _RANDOM_CHARS - 2  # the leading and trailing dots
    encoded = name.encode("utf-8", "surrogateescape")[:room]
    return f".{encoded.decode('utf-8', 'ignore')}."  # NAME_MAX counts bytes: never cut a character in two


def atomic_write(path: Path, write, *sources) -> None:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, then rename it into place.

    A crash or kill mid-write leaves the previous file untouched and no partial file under ``path``;
    SIGINT and SIGTERM (:mod:`tmdeploy.signals`) also remove the temporary file. ``sources``: input files
    ``path`` must not be.
    """
    path = Path(path)
    check_output(path, *sources)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name, path.parent), suffix=_TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise TmdeployError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts should get the usual mode
        write(Path(tmp))
        check_output(path, *sources)  # it may have been swapped for a device or a link while we wrote
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):  # disk full, file too large, I/O error, target is a directory, ...
            raise TmdeployError(f"cannot write {path}: {err.strerror or err}") from err
        raise


def json_text(obj) -> str:
    """Strict JSON (RFC 8259) for reports: NaN and ±Infinity, which JSON lacks, are written as null."""
    return json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n"


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


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
