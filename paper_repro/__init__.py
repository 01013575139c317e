"""Reproductions of the Net-Trim papers' experiments, one script per table or figure.

Every script is runnable (``python paper_repro/<name>.py [--quick] [--out-dir DIR]
[--data-root DIR]``) and importable (``main(argv=None) -> int``, ``run(config, data_root)`` ->
the JSON-ready result dict). See ``paper_repro/README.md`` for the map to the papers.
"""

__all__ = [
    "cascade_vs_parallel",
    "common",
    "fashion_fc",
    "mnist_cnn",
    "mnist_fc",
    "sample_complexity",
    "spirals",
]

#: Script names, in the order of the README.
EXPERIMENTS = (
    "spirals",
    "cascade_vs_parallel",
    "mnist_fc",
    "mnist_cnn",
    "sample_complexity",
    "fashion_fc",
)
