"""SonicWorld: a small procedurally generated audio-visual world, so CLIPSonic runs offline on a CPU.

The world and its videos (:mod:`.world`), an exact judge of its sounds (:mod:`.oracle`), a tiny CLIP
trained on its pictures and captions (:mod:`.clip`) and ``clipsonic demo`` (:mod:`.demo`).
"""

from clipsonic.sonicworld.clip import WorldClipConfig, modality_gap, train_world_clip
from clipsonic.sonicworld.oracle import NONE, OracleClassifier
from clipsonic.sonicworld.world import CONCEPT_NAMES, CONCEPTS, WorldConfig, captions, make_clip, render_world

__all__ = ["CONCEPTS", "CONCEPT_NAMES", "WorldConfig", "captions", "make_clip", "render_world", "NONE",
           "OracleClassifier", "WorldClipConfig", "modality_gap", "train_world_clip"]
