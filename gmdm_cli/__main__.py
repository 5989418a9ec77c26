"""``python -m gmdm_cli`` runs the ``gmdm`` command (and ``torchrun -m gmdm_cli train`` trains in parallel)."""

from .cli import main

main()
