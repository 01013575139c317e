"""Shared test settings.

Tests use tiny problems, where torch's intra-op threads only add synchronisation cost (and, on a
loaded 2-core machine, stall badly), so they run single-threaded.
"""

import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("NETTRIM_DATA", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data"))
