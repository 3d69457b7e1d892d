"""`meddet bench` (not built yet)."""

from meddet.errors import MedDetError


def bench() -> None:
    """(not built yet) `meddet bench`."""
    raise MedDetError("`meddet bench` is not built yet; see the README for the commands that exist")
