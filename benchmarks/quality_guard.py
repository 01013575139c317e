"""The quality guard of issue 11: every Net-Trim cell of two bench_quality runs side by side.

    python benchmarks/quality_guard.py [BEFORE.json] [NOW.json]

(default: ``results/bench_quality_before.json`` and ``results/bench_quality.json``). For the
trained LeNet layers the two runs may use differently trained networks (the model cache is
per machine), so a cell compares Net-Trim's error as a ratio to SparseGPT's in the same run;
the synthetic layer's data are the same in both runs, so its errors are compared directly. A
default cell (``nt-rw+refit``) worse by more than 2% relative, on the calibration or the
held-out rows, is flagged; the exit status is 1 when there is one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = "nt-rw+refit"
LIMIT = 0.02


def value(run: dict, layer: str, sparsity: str, method: str, key: str) -> float:
    cell = run[layer][sparsity]
    x = cell[method][key]
    return x if layer == "synthetic" else x / cell["sparsegpt"][key]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    before_path = Path(argv[0]) if argv else HERE / "results" / "bench_quality_before.json"
    now_path = Path(argv[1]) if len(argv) > 1 else HERE / "results" / "bench_quality.json"
    before = json.loads(before_path.read_text())["layers"]
    now = json.loads(now_path.read_text())["layers"]
    print(f"quality guard: {before_path.name} -> {now_path.name} (LeNet layers: error / "
          "SparseGPT's in the same run; synthetic: error); calibration | held-out")
    worse = 0
    for layer in now:
        for s in now[layer]:
            methods = [m for m in now[layer][s] if m.startswith("nt-") and
                       m in before.get(layer, {}).get(s, {})]
            for m in methods:
                parts = []
                for key in ("error", "heldout_error"):
                    b, n = (value(r, layer, s, m, key) for r in (before, now))
                    flag = n / b - 1.0 > LIMIT
                    worse += flag and m == DEFAULT
                    parts.append(f"{b:.4f} -> {n:.4f} ({100 * (n / b - 1):+.1f}%)"
                                 + ("  WORSE" if flag else ""))
                secs = (before[layer][s][m]["seconds"], now[layer][s][m]["seconds"])
                print(f"{layer:9s} {float(s):4.0%} {m:12s} " + " | ".join(parts)
                      + f"   {secs[0]:.0f} s -> {secs[1]:.0f} s")
    print(f"default ({DEFAULT}) cells worse by more than {LIMIT:.0%}: {worse}")
    return 1 if worse else 0


if __name__ == "__main__":
    raise SystemExit(main())
