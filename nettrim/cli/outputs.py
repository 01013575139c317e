"""Where a command writes, checked before any work: every output path can be written, none is an
input or another output. The outputs themselves are staged and renamed into place together
(:class:`nettrim.io.files.StagedFiles`, ``args.outputs``); :func:`commit` does the renames while
SIGINT and SIGTERM wait.

Torch-free, like the parser.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Sequence

from .common import UsageError

__all__ = ["check_writable", "commit", "input_paths", "plot_outputs", "refuse_collisions",
           "same_file"]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same path once resolved, a symbolic link
    to it, or a hard link of it (same device and inode)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def input_paths(what: str, path: str | os.PathLike, split: str = "train") -> list:
    """``(what, path)`` for an input and, for a data directory, each file read from it."""
    from ..io.datafiles import data_files

    path = pathlib.Path(path)
    found = [(what, path)]
    if path.is_dir():
        found += [(what, file) for file in data_files(path, split=split)]
    return found


def plot_outputs(directory: str | os.PathLike) -> list:
    """``("--plot", path)`` for the plot directory and each file a report's plots may take."""
    from ..plots import REPORT_FILES

    directory = pathlib.Path(directory)
    return [("--plot", directory)] + [("--plot", directory / name) for name in REPORT_FILES]


def refuse_collisions(outputs: Sequence[tuple], inputs: Sequence[tuple], *,
                      overwrite: bool = False) -> None:
    """UsageError when an output is an input, or two outputs are one file (:func:`same_file`).

    Parameters
    ----------
    outputs : sequence of (str, path)
        Each output with the flag that names it (``"--out"``, ``"--report"``, ``"--plot"``).
    inputs : sequence of (str, path)
        Each input with what it is (``"checkpoint"``, ``"--data"``, ``"--original"``).
    overwrite : bool, default False
        ``--out`` may be the checkpoint (``--overwrite``: it is replaced atomically).
    """
    for i, (flag, out) in enumerate(outputs):
        for what, source in inputs:
            if not same_file(out, source):
                continue
            if flag == "--out" and what == "checkpoint":
                if overwrite:
                    continue
                msg = (f"--out {out} is the input checkpoint; pass --overwrite to replace it "
                       "(the input is otherwise never modified)")
                raise UsageError(msg)
            which = "" if os.path.realpath(out) == os.path.realpath(source) else f" {source}"
            msg = (f"{flag} {out} is the {what}{which} (an input): outputs never replace "
                   "inputs; name another path")
            raise UsageError(msg)
        for other_flag, other in outputs[:i]:
            if same_file(out, other) and not (flag == other_flag == "--plot"):
                msg = f"{flag} {out} is also the {other_flag} output; name another path"
                raise UsageError(msg)


def check_writable(path: pathlib.Path, what: str, *, is_dir: bool = False) -> None:
    """UsageError unless ``path`` (a file, or a directory with ``is_dir``) can be written: its
    nearest existing ancestor must be a directory that takes new files, probed with an anonymous
    temporary file (no name is left behind, even if interrupted)."""
    path = pathlib.Path(path)
    if path.exists() and path.is_dir() != is_dir:
        msg = (f"{what} {path} is {'a directory' if path.is_dir() else 'a file'}; "
               f"name a {'directory' if is_dir else 'file'}")
        raise UsageError(msg)
    existing = path if is_dir else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        msg = f"{what} {path}: {existing} is not a directory"
        raise UsageError(msg)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        msg = f"{what} {path}: cannot write in {existing} ({err.strerror or type(err).__name__})"
        raise UsageError(msg) from err


def commit(args) -> list[pathlib.Path]:
    """Rename the command's staged outputs (``args.outputs``) into place, all of them, while
    SIGINT and SIGTERM wait (``args.signals``); a signal that arrived meanwhile is raised
    afterwards, when the run counts as complete (see :func:`nettrim.cli.main`)."""
    with args.signals.held():
        return args.outputs.commit()
