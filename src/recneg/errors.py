"""Exceptions with one-line messages that name what was wrong and where.

The CLI prints ``str(error)`` for any :class:`RecnegError` and exits with status 2, so a message must
stand on its own: which file/line/field or which parameter of which object, what was expected, what was
received.
"""


class RecnegError(Exception):
    """Base class of every error recneg raises on bad input."""


class ConfigError(RecnegError, ValueError):
    """A setting is unknown, of the wrong type, or out of its allowed range."""


class DataError(RecnegError, ValueError):
    """An input file or array is malformed (the message names the file, line and field)."""
