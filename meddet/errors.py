"""User-facing errors.

A :class:`MedDetError` carries a single line that says what went wrong, where, and how to
fix it. The CLI turns it into exit code 2 without a traceback (unless ``--debug``).
Library code raises it only for problems caused by the user's input (bad files, bad
options); programming errors stay ordinary exceptions.
"""


class MedDetError(Exception):
    """An error caused by user input; ``str(err)`` is the one-line message shown to the user."""
