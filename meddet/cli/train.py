"""`meddet pretrain-teacher` (not built yet)."""

from meddet.errors import MedDetError


def pretrain_teacher() -> None:
    """(not built yet) `meddet pretrain-teacher`."""
    raise MedDetError("`meddet pretrain-teacher` is not built yet; see the README for the commands that exist")
