"""The one exception family users catch: every expected failure (bad input, missing weights,
mismatched configs) raises a subclass of :class:`ClipsonicError` with a message that names the
thing and the fix. The CLI prints these as one line; anything else is a bug and keeps its traceback."""


class ClipsonicError(Exception):
    """Base class of clipsonic's user-facing errors."""
