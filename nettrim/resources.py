"""What a solve costs in memory: the peak above the start, for the per-layer reports.

:class:`PeakMemory` is a context manager. On a CUDA device it reads torch's allocator
(``torch.cuda.max_memory_allocated``, its peak statistics reset at entry). On the CPU it
samples the process's resident memory (``/proc/self/statm``, Linux) every
:data:`SAMPLE_SECONDS` from a background thread and keeps the largest value: no counter of
the process is reset, and a peak shorter than the sampling period can be missed, so the figure
is a lower bound, good to tens of MB. Where neither is available it reports None.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

__all__ = ["PeakMemory", "SAMPLE_SECONDS", "resident_bytes"]

#: Sampling period of the resident memory on the CPU.
SAMPLE_SECONDS = 0.005
_STATM = "/proc/self/statm"


def resident_bytes() -> Optional[int]:
    """The process's resident memory in bytes (Linux), else None."""
    try:
        with open(_STATM, "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.megabytes``: the largest memory in
    use during the block above its start (MB, float), or None where it cannot be measured."""

    def __init__(self, device: Any = None):
        self.device = device
        self.megabytes: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = self._peak = None

    def _cuda(self) -> bool:
        return getattr(self.device, "type", str(self.device)) == "cuda"

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            now = resident_bytes()
            if now is not None and now > self._peak:
                self._peak = now

    def __enter__(self) -> "PeakMemory":
        if self._cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._peak = resident_bytes()
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._cuda():
            import torch

            peak = torch.cuda.max_memory_allocated(self.device)
            self.megabytes = max(peak - self._start, 0) / 2 ** 20
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            now = resident_bytes() or 0
            self.megabytes = max(self._peak, now) - self._start
            self.megabytes = max(self.megabytes, 0) / 2 ** 20
