"""How nettrim writes files, and the one error a file nettrim cannot use raises.

:func:`atomic_write` writes to a temporary file in the destination directory that is renamed
into place: an interrupted write leaves no partial file. Every problem a user can cause with a
checkpoint, an architecture factory or a data file (missing or corrupt file, unknown format,
wrong factory, keys or shapes that do not match, NaN/Inf values) raises :class:`CheckpointError`
(a :class:`ValueError`) with a one-line message naming the file (:func:`one_line`).

Torch-free: the command line's parser and the writers of every format use it.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable

__all__ = ["CheckpointError", "atomic_write", "one_line"]


class CheckpointError(ValueError):
    """A checkpoint, factory or data file that cannot be used; the message is one line."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> pathlib.Path:
    """Call ``write(temp_path)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary file lives in the destination directory (so :func:`os.replace` is atomic) and
    is removed if ``write`` raises anything, ``KeyboardInterrupt`` included.

    Parameters
    ----------
    path : str or path-like
        Final file name. Its directory is created if missing.
    write : callable
        Receives the temporary path (a str) and writes the whole file there.

    Returns
    -------
    pathlib.Path
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    try:
        write(temp)
        with open(temp, "rb") as done:
            os.fsync(done.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        pathlib.Path(temp).unlink(missing_ok=True)
        raise
    return path


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (white space folded), cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
