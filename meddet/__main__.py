"""``python -m meddet`` (also what ``torchrun -m meddet`` runs)."""

from meddet.cli import run

run()
