"""`meddet eval` (not built yet)."""

from meddet.errors import MedDetError


def evaluate() -> None:
    """(not built yet) `meddet eval`."""
    raise MedDetError("`meddet eval` is not built yet; see the README for the commands that exist")
