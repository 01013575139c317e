"""How nettrim writes files, and the errors a file can cause.

:class:`StagedFiles` writes each output to a temporary file in its destination directory and
renames them all into place together: an interrupted or failed run leaves no partial file and
no output without its companions (a checkpoint without its report). :func:`atomic_write` is the
one-file case. Every problem a user can cause with a checkpoint, an architecture factory or a
data file (missing or corrupt file, unknown format, wrong factory, keys or shapes that do not
match, NaN/Inf values) raises :class:`CheckpointError` (a :class:`ValueError`) with a one-line
message naming the file (:func:`one_line`); an output that cannot be written (disk full, file
size limit) raises :class:`OutputError` (an :class:`OSError`).

Torch-free: the command line's parser and the writers of every format use it.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import tempfile
from collections.abc import Callable
from typing import Optional

__all__ = ["CheckpointError", "OutputError", "StagedFiles", "atomic_write", "one_line",
           "read_state_file"]


class CheckpointError(ValueError):
    """A checkpoint, factory or data file that cannot be used; the message is one line."""


class OutputError(OSError):
    """An output that could not be written (disk full, file size limit, I/O error); no part of
    it was left in place. The message is one line naming the file."""


class StagedFiles:
    """Outputs written whole to temporary files, then renamed into place together.

    Each :meth:`write` (or :meth:`write_dir`) fills a temporary file beside its destination
    (same directory, so the rename is atomic); :meth:`commit` renames them all. A write that
    fails raises :class:`OutputError` and leaves nothing; a rename that fails (or is
    interrupted) puts back what the earlier renames replaced. Used as a context manager,
    whatever was staged and not committed is removed when the block ends, ``KeyboardInterrupt``
    included, and so are the directories created for it.

    Attributes
    ----------
    committed : bool
        True once every staged file is in place.

    Examples
    --------
    >>> with StagedFiles() as outputs:                                    # doctest: +SKIP
    ...     outputs.write("m.pt", lambda tmp: torch.save(state, tmp))
    ...     outputs.write("m.report.json", lambda tmp: pathlib.Path(tmp).write_text(text))
    ...     outputs.commit()
    """

    def __init__(self) -> None:
        self.committed = False
        self._files: list[tuple[pathlib.Path, pathlib.Path]] = []   # (temporary, destination)
        self._temp_dirs: list[pathlib.Path] = []
        self._made_dirs: list[pathlib.Path] = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.discard()

    @property
    def destinations(self) -> list[pathlib.Path]:
        """The files staged so far, in the order they were staged."""
        return [final for _, final in self._files]

    def write(self, path: str | os.PathLike, write: Callable[[str], object]) -> pathlib.Path:
        """Stage ``path``: ``write(temporary_path)`` writes the whole file there.

        Parameters
        ----------
        path : str or path-like
            The destination. Its directory is created if missing (and removed again if the
            outputs are discarded).
        write : callable
            Receives the temporary path (a str) and writes the whole file there.

        Returns
        -------
        pathlib.Path
            The temporary file (renamed to ``path`` by :meth:`commit`).

        Raises
        ------
        OutputError
            The file could not be written (``OSError``, or the ``RuntimeError`` of a writer
            such as ``torch.save``); its temporary file is removed.
        """
        path = pathlib.Path(path)
        if path in self.destinations:
            msg = f"path: {path} is staged already"
            raise ValueError(msg)
        try:
            self._make_dirs(path.parent)
            handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                            suffix=".part")
            os.close(handle)
        except OSError as err:
            raise OutputError(_cannot_write(path, err)) from err
        temp = pathlib.Path(name)
        self._files.append((temp, path))   # registered at once: discard() removes it
        try:
            write(name)
            _sync(temp)
            os.chmod(temp, 0o644)
        except BaseException as err:
            temp.unlink(missing_ok=True)
            self._files.remove((temp, path))
            if isinstance(err, (OSError, RuntimeError)):
                raise OutputError(_cannot_write(path, err)) from err
            raise
        return temp

    def write_dir(self, directory: str | os.PathLike,
                  write: Callable[[str], object]) -> list[pathlib.Path]:
        """Stage the files that ``write(temporary_directory)`` writes, for ``directory``.

        The temporary directory lives inside ``directory`` (created if missing); each regular
        file ``write`` leaves in it is renamed to ``directory / name`` by :meth:`commit`.

        Returns
        -------
        list of pathlib.Path
            The destinations staged.
        """
        directory = pathlib.Path(directory)
        try:
            self._make_dirs(directory)
            temp_dir = pathlib.Path(tempfile.mkdtemp(dir=directory, prefix=".nettrim-",
                                                     suffix=".part"))
        except OSError as err:
            raise OutputError(_cannot_write(directory, err)) from err
        self._temp_dirs.append(temp_dir)
        try:
            write(str(temp_dir))
            files = sorted(p for p in temp_dir.iterdir() if p.is_file())
            for file in files:
                _sync(file)
        except (OSError, RuntimeError) as err:
            raise OutputError(_cannot_write(directory, err)) from err
        staged = []
        for file in files:
            if directory / file.name in self.destinations:
                msg = f"write: {directory / file.name} is staged already"
                raise ValueError(msg)
            self._files.append((file, directory / file.name))
            staged.append(directory / file.name)
        return staged

    def commit(self) -> list[pathlib.Path]:
        """Rename every staged file into place; returns the destinations.

        Raises
        ------
        OutputError
            A rename failed: the files renamed before it are put back as they were (a
            replaced file is restored from a hard link kept until the end), nothing is staged
            any more.
        """
        backups: dict[pathlib.Path, Optional[pathlib.Path]] = {}
        try:
            for temp, final in self._files:
                backups[final] = _keep(final)
                os.replace(temp, final)
        except BaseException as err:
            for temp, final in self._files[:len(backups)]:
                backup = backups[final]
                if temp.exists():                  # not renamed: its destination is as it was
                    if backup is not None:
                        backup.unlink(missing_ok=True)
                elif backup is not None:
                    os.replace(backup, final)
                else:                              # there was no file (or no link to keep)
                    final.unlink(missing_ok=True)
            self.discard()
            if isinstance(err, OSError):
                failed = self._files[len(backups) - 1][1] if backups else "outputs"
                raise OutputError(_cannot_write(failed, err)) from err
            raise
        self.committed = True
        for backup in backups.values():
            if backup is not None:
                backup.unlink(missing_ok=True)
        for temp_dir in self._temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)
        return self.destinations

    def discard(self) -> None:
        """Remove every staged file (nothing is renamed) and the directories made for them."""
        for temp, _ in self._files:
            temp.unlink(missing_ok=True)
        for temp_dir in self._temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)
        for made in reversed(self._made_dirs):
            try:
                made.rmdir()
            except OSError:   # not empty: something else was put there meanwhile
                pass
        self._files, self._temp_dirs, self._made_dirs = [], [], []

    def _make_dirs(self, directory: pathlib.Path) -> None:
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for made in reversed(missing):
            made.mkdir(exist_ok=True)
            self._made_dirs.append(made)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> pathlib.Path:
    """Call ``write(temp_path)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary file lives in the destination directory (so :func:`os.replace` is atomic) and
    is removed if ``write`` raises anything, ``KeyboardInterrupt`` included (one file of
    :class:`StagedFiles`).

    Parameters
    ----------
    path : str or path-like
        Final file name. Its directory is created if missing.
    write : callable
        Receives the temporary path (a str) and writes the whole file there.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputError
        The file could not be written (disk full, ...); nothing was left in place.
    """
    with StagedFiles() as staged:
        staged.write(path, write)
        return staged.commit()[0]


def read_state_file(path: str | os.PathLike, what: str, key: str, value: object) -> dict:
    """A run's state file (a ``torch.save`` of plain tensors, strings and numbers), read with
    ``weights_only=True``. Raises ValueError naming ``path`` and ``what`` it should be when it
    cannot be read or its ``key`` entry is not ``value`` (another file, another version)."""
    import torch

    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure: the file is not ours or is damaged
        msg = f"{path} cannot be read as {what} ({type(err).__name__}: {one_line(str(err))})"
        raise ValueError(msg) from err
    if not isinstance(doc, dict) or doc.get(key) != value:
        msg = f"{path} is not {what} ({key} {value})"
        raise ValueError(msg)
    return doc


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (white space folded), cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _sync(path: pathlib.Path) -> None:
    with open(path, "rb") as done:
        os.fsync(done.fileno())


def _keep(final: pathlib.Path) -> Optional[pathlib.Path]:
    """A hard link to the file ``final`` is about to replace (None if there is none, or the
    file system has no hard links): what :meth:`StagedFiles.commit` restores on failure."""
    if not os.path.lexists(final):
        return None
    for _ in range(8):
        backup = final.with_name(f".{final.name}.{secrets.token_hex(4)}.bak")
        try:
            os.link(final, backup, follow_symlinks=False)
            return backup
        except FileExistsError:
            continue
        except OSError:
            return None
    return None


def _cannot_write(path, err: BaseException) -> str:
    """One line: which output failed and why, with what the system says about room to write
    (a low free space, a file size limit) when there is something to say."""
    why = err.strerror if isinstance(err, OSError) and err.strerror else \
        (one_line(str(err), 160) or type(err).__name__)
    try:
        free = shutil.disk_usage(pathlib.Path(path).parent).free
        if free < _LOW_SPACE:
            why += f"; {_size(free)} free on its device"
    except OSError:
        pass
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            why += f"; files are limited to {_size(limit)} (ulimit -f)"
    except (ImportError, OSError, ValueError):   # no resource module off POSIX
        pass
    return one_line(f"cannot write {path} ({why}); nothing was written")


#: Free space below which a failed write names it.
_LOW_SPACE = 256 * 1024 * 1024


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover - unreachable
