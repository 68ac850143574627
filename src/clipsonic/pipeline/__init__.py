"""``CLIPSonicPipeline``: query (text | image | video) → CLIP embedding → bridge → sampler + guidance
→ mel → vocoder → waveform. ``pipeline.py``: the class (loading, saving, its ``__call__``);
``queries.py``: checking and encoding queries, output length, seeds; ``outputs.py``: writing audio,
muxed videos and mel images."""

from clipsonic.pipeline.pipeline import (
    BUILTIN_DIR,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    CLIPSonicOutput,
    CLIPSonicPipeline,
)
from clipsonic.pipeline.queries import MAX_SECONDS, VIDEO_POOLING

__all__ = [
    "BUILTIN_DIR",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "MAX_SECONDS",
    "VIDEO_POOLING",
    "CLIPSonicOutput",
    "CLIPSonicPipeline",
]
