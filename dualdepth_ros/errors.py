"""Exceptions that carry a message meant for the user (no traceback wall)."""


class DualDepthError(Exception):
    """An error caused by the user's input: bad arguments, a corrupt bag, a missing topic.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    """
