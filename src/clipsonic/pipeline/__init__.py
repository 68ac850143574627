"""``CLIPSonicPipeline``: query (text | image | video) → CLIP embedding → bridge → sampler + guidance
→ mel → vocoder → waveform. Files: ``pipeline.py`` (the class and its ``__call__``), ``queries.py``
(checking and encoding queries, output length, seeds), ``loading.py`` (pipeline directories),
``outputs.py`` (writing audio, muxed videos and mel images)."""

from clipsonic.pipeline.loading import PipelineLoadError
from clipsonic.pipeline.pipeline import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    CLIPSonicOutput,
    CLIPSonicPipeline,
    PipelineError,
)
from clipsonic.pipeline.queries import MAX_SECONDS, VIDEO_POOLING, QueryError

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "MAX_SECONDS",
    "VIDEO_POOLING",
    "CLIPSonicOutput",
    "CLIPSonicPipeline",
    "PipelineError",
    "PipelineLoadError",
    "QueryError",
]
