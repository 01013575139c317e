"""What a model is and how it changes: its graph, its layers' activations, surgery, sparse form.

* :mod:`.graph`: what the traced graph says about each prunable layer (activation, BatchNorm,
  residual add; the layers that cannot be pruned or are left dense by default).
* :mod:`.capture`: the prunable layers' inputs and outputs recorded on calibration data
  (:mod:`.rows`: a call as the program's rows, and their seeded subsample; :mod:`.hooks`:
  the hooks and replays that record a model's calls).
* :mod:`.blocks`: the same records block by block for a model with repeated blocks (a
  transformer's layers), one block's activations in memory at a time.
* :mod:`.surgery`: weights written back, zeros held by masks, units removed, dead units
  compacted away (:mod:`.dependency`: the coupled channels of any graph, via Torch-Pruning).
* :mod:`.sparse`: CSR kernels where measured faster, and the compressed checkpoint.

The submodules are imported where they are used (this package imports none of them).
"""

__all__ = ["blocks", "capture", "dependency", "graph", "hooks", "rows", "sparse", "surgery"]
