"""``CLIPSonicPipeline`` (``pipeline.py``) with its queries (``queries.py``: checking, encoding, output
length, seeds) and outputs (``outputs.py``: audio, muxed videos, mel images)."""

from clipsonic.pipeline.pipeline import (
    BUILTIN_DIR,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    CLIPSonicOutput,
    CLIPSonicPipeline,
)
from clipsonic.pipeline.queries import MAX_SECONDS, VIDEO_POOLING

__all__ = ["BUILTIN_DIR", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "MAX_SECONDS", "VIDEO_POOLING", "CLIPSonicOutput",
           "CLIPSonicPipeline"]
