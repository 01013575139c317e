"""What the benchmark scripts share: how their results are written, and their log line.

Each script is run as ``python benchmarks/<script>.py`` (this folder is then on the import path)
or loaded by the tests from its file (``tests/conftest.py``); a script puts this folder on the
path itself before ``from common import ...``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch

import nettrim
from nettrim.io.files import atomic_write

__all__ = ["HERE", "REPO", "add_data_and_out", "log", "quiet_single_thread", "save_results",
           "write_json", "write_text"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def add_data_and_out(parser, name):
    """``--data-root`` ($NETTRIM_DATA, else ../shared/data) and ``--out``
    (``benchmarks/results/<name>``, the prefix of the .json and .txt written)."""
    parser.add_argument("--data-root", default=os.environ.get("NETTRIM_DATA", "../shared/data"))
    parser.add_argument("--out", default=f"benchmarks/results/{name}")


def quiet_single_thread():
    """One torch thread (the timings' setting) and no PruningWarning lines (the statuses are in
    the rows)."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", nettrim.PruningWarning)


def log(msg):
    """A progress line on stderr (stdout holds the results)."""
    print(msg, file=sys.stderr, flush=True)


def write_text(path, text):
    """``text`` written to ``path`` atomically."""
    def write(temp):
        with open(temp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path, payload):
    """``payload`` as indented JSON, written atomically."""
    def write(temp):
        with open(temp, "w") as f:
            json.dump(payload, f, indent=1)
    atomic_write(path, write)


def save_results(prefix, payload, lines):
    """``prefix.json`` (the payload) and ``prefix.txt`` (the printed lines), atomically."""
    write_json(prefix + ".json", payload)
    write_text(prefix + ".txt", "\n".join(lines) + "\n")
