"""``python -m nettrim.cli ARGS``: the ``nettrim`` command."""

import sys

from . import main

sys.exit(main())
