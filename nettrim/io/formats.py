"""Names of the checkpoint formats, in a module free of torch so that the command line's parser
(``nettrim --help``) builds without importing it. :mod:`nettrim.io.checkpoint` reads and writes
them.
"""

__all__ = ["FORMATS"]

#: Checkpoint formats, as :func:`nettrim.io.checkpoint.detect_format` names them.
FORMATS = ("state_dict", "module", "export", "safetensors")
