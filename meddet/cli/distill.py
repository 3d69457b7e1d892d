"""`meddet distill` (not built yet)."""

from meddet.errors import MedDetError


def distill() -> None:
    """(not built yet) `meddet distill`."""
    raise MedDetError("`meddet distill` is not built yet; see the README for the commands that exist")
