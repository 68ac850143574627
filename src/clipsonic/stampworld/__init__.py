"""StampWorld: a small audio-visual world of real recorded sounds and real pictures (Tux Paint's stamps,
Debian package ``tuxpaint-stamps-default``, GPL-2), rendered to videos as SonicWorld is.

The concepts and their assets (:mod:`.assets`), the clips and the files (:mod:`.world`), and
``python -m clipsonic.stampworld OUT`` (:mod:`.__main__`).
"""

from clipsonic.stampworld.assets import (
    CONCEPT_NAMES,
    CONCEPTS,
    DEFAULT_STAMPS,
    LICENCE,
    PACKAGE,
    StampConcept,
    asset_manifest,
    find_stamps,
    load_picture,
    load_recording,
)
from clipsonic.stampworld.world import StampWorldConfig, captions, event_audio, make_clip, render_stampworld

__all__ = ["CONCEPTS", "CONCEPT_NAMES", "DEFAULT_STAMPS", "LICENCE", "PACKAGE", "StampConcept", "asset_manifest",
           "find_stamps", "load_picture", "load_recording", "StampWorldConfig", "captions", "event_audio",
           "make_clip", "render_stampworld"]
