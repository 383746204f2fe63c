"""``python -m stripe …`` (also what ``torchrun -m stripe`` runs)."""
import sys

from .cli import main

sys.exit(main())
