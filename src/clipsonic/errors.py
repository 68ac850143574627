"""The one exception family users catch: every expected failure (bad input, missing weights,
mismatched configs) raises a subclass of :class:`ClipsonicError` with a message that names the
thing and the fix. The CLI and the app show these as one line (:func:`one_line`); anything else is a bug and keeps
its traceback."""

import errno


class ClipsonicError(Exception):
    """Base class of clipsonic's user-facing errors."""


def one_line(exc: BaseException) -> str:
    """An expected error as one line: OS errors name the file and say what to do about a full or read-only disk."""
    if isinstance(exc, ClipsonicError) or not isinstance(exc, OSError):
        text = str(exc) if isinstance(exc, ClipsonicError) else f"{type(exc).__name__}: {exc}"
    else:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror or exc}"
        if exc.errno == errno.ENOSPC:
            text += " (free space on that disk, or choose another output folder, then run the same command again)"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            text += " (choose a folder you can write to)"
    return " ".join(text.split())
