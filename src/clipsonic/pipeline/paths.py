"""Where the built-in models live, and the pipeline folder a user's ``--model`` names.

The built-in models are finished demos' pipelines shipped inside the package (:mod:`clipsonic.builtin` installs
them): ``--model builtin:NAME`` names one, no ``--model`` the default (StampWorld's).
"""

from __future__ import annotations

import os
from pathlib import Path

from clipsonic.errors import ClipsonicError

BUILTIN_ROOT = Path(__file__).resolve().parent.parent / "builtin"
BUILTIN_DIR = BUILTIN_ROOT / "stampworld"
PROMPTS_NAME = "prompts.txt"  # a pipeline folder's list of texts it knows (the built-in models have one)


def model_path(model: str | os.PathLike | None) -> Path:
    """A pipeline folder from what a user typed: a path, ``builtin:NAME`` (a built-in model by name) or None (the
    default built-in model). Unknown names, and no built-in model in this install, are refused in one line."""
    text = None if model is None else os.fspath(model)
    if text is None or text == "builtin":
        if not (BUILTIN_DIR / "model_index.json").is_file():
            raise ClipsonicError(f"this clipsonic install has no built-in model ({BUILTIN_DIR} is missing); "
                                 "pass a pipeline directory (--model DIR), or reinstall clipsonic")
        return BUILTIN_DIR
    if not text.startswith("builtin:"):
        return Path(text)
    names = sorted(p.name for p in BUILTIN_ROOT.iterdir() if (p / "model_index.json").is_file())
    if text.removeprefix("builtin:") not in names:
        raise ClipsonicError(f"no built-in model {text!r}; this install has " + ", ".join(f"builtin:{n}" for n in names))
    return BUILTIN_ROOT / text.removeprefix("builtin:")
