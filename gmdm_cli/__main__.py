"""``python -m gmdm_cli`` runs the ``gmdm`` command (and ``torchrun -m gmdm_cli train`` trains in parallel)."""

import sys

from .cli import main

sys.exit(main())
