"""The evaluation's user-facing error (its own module so every evaluation module can raise it)."""

from clipsonic.errors import ClipsonicError


class EvaluationError(ClipsonicError):
    """The evaluation cannot run on these inputs (no audio in the split, unsupported mode, …)."""
