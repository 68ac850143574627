"""SonicWorld: a small procedurally generated audio-visual world, so CLIPSonic runs offline on a CPU.

Eight concepts, each a coloured shape that makes one kind of sound (:mod:`.world`), rendered as
real H.264/AAC videos with a manifest for ``clipsonic preprocess``; an oracle that names the
concept of any clip from its log-mel (:mod:`.oracle`); a tiny CLIP trained on the world's pictures
and captions that loads like OpenAI's (:mod:`.clip`); and ``clipsonic demo`` (:mod:`.demo`).

    manifest = render_world("world/", WorldConfig(seed=0))
    clip_dir = train_world_clip("world/clip", WorldConfig(seed=0))
    OracleClassifier().classify_audio(audio)  # → concept indices, -1 for silence
"""

from clipsonic.sonicworld.clip import WorldClipConfig, modality_gap, train_world_clip
from clipsonic.sonicworld.oracle import NONE, OracleClassifier
from clipsonic.sonicworld.world import (
    CONCEPT_NAMES,
    CONCEPTS,
    Concept,
    WorldConfig,
    captions,
    make_clip,
    render_world,
)

__all__ = ["CONCEPTS", "CONCEPT_NAMES", "Concept", "WorldConfig", "captions", "make_clip", "render_world", "NONE",
           "OracleClassifier", "WorldClipConfig", "modality_gap", "train_world_clip"]
