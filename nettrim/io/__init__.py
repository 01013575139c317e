"""Files: how nettrim reads and writes them. Knows torch and file formats, not pruning.

* :mod:`.files`: atomic writes and :class:`~nettrim.io.files.CheckpointError` (torch-free).
* :mod:`.formats`: the checkpoint format names (torch-free, for the command line's parser).
* :mod:`.checkpoint`: read a model to prune from any format, write the pruned one back.
* :mod:`.export`: ``torch.export`` programs (``.pt2``) exported and rebuilt as modules.
* :mod:`.datafiles`: the data files the command line reads (``.npz``, ``.pt``, idx).
* :mod:`.datasets`: MNIST, Fashion-MNIST and the two spirals, found or downloaded.

The submodules are imported where they are used (this package imports none of them).
"""

__all__ = ["checkpoint", "datafiles", "datasets", "export", "files", "formats"]
