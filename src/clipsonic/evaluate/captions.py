"""Captions per label: text modes query clip i with ``captions[label][i % n]`` instead of the template.

The file is JSON ``{label: [caption, …]}``. ``i`` is the clip's position in the split (the index
that also seeds it), not its position among the evaluated clips, so a clip keeps its caption (and
its cached audio stays valid) whatever ``--num-clips`` picks. Beware of aliasing: when the split
interleaves classes (clip i has class i % C) and the number of captions shares a factor with C,
a label's clips see only some of its captions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from clipsonic.evaluate.errors import EvaluationError
from clipsonic.evaluate.testset import EvalClip

Captions = Mapping[str, Sequence[str]]
_SHAPE = 'a JSON object mapping each label to a non-empty list of caption strings, e.g. {"dog": ["a dog barks"]}'


def load_captions(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read and check a captions file; every problem is one line naming the file and the fix."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvaluationError(f"captions file {path} not found; pass --captions a file holding {_SHAPE}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"captions file {path} cannot be read ({exc}); it must hold {_SHAPE}") from None
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"captions file {path} is not valid JSON ({exc}); it must hold {_SHAPE}") from None
    if not isinstance(data, dict):
        raise EvaluationError(f"captions file {path} holds a JSON {type(data).__name__}; it must hold {_SHAPE}")
    for label, captions in data.items():
        if not (isinstance(captions, list) and captions and all(isinstance(c, str) and c.strip() for c in captions)):
            raise EvaluationError(f"captions file {path}: the entry of label {label!r} is {json.dumps(captions)[:60]}; "
                                  f"the file must hold {_SHAPE}")
    return data


def captions_digest(captions: Captions) -> str:
    """SHA-256 (first 16 hex) of the captions' content: the cache key of audio generated from them."""
    text = json.dumps({k: list(v) for k, v in captions.items()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def text_query(clip: EvalClip, template: str, captions: Captions | None) -> str:
    """The text query of a labelled clip: its label's caption ``clip.index % n``, else the template."""
    options = captions.get(clip.label) if captions else None
    if options:
        return options[clip.index % len(options)]
    return template.format(label=clip.label)


def uncaptioned_note(clips: Sequence[EvalClip], captions: Captions, path: str) -> str | None:
    """A note naming the labels of the split that the captions file does not cover (they use the template)."""
    missing = sorted({c.label for c in clips if c.label and not captions.get(c.label)})
    if not missing:
        return None
    count = sum(c.label in missing for c in clips)
    shown = ", ".join(repr(m) for m in missing[:5]) + (", …" if len(missing) > 5 else "")
    return (f"{count} clip(s) with label(s) {shown} have no captions in {path}: "
            "their text modes query with text_template")
