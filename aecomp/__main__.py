"""``python -m aecomp ...`` (also what ``torchrun -m aecomp`` runs)."""
import sys

from .cli import main

sys.exit(main())
