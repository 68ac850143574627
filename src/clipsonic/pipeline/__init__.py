"""``CLIPSonicPipeline`` (``pipeline.py``) with its queries (``queries.py``: checking, encoding, output
length, seeds), edits (``edits.py``: a source sound to vary, inpaint or continue) and outputs (``outputs.py``: audio,
muxed videos, mel images)."""

from clipsonic.pipeline.pipeline import DEFAULT_SAMPLER, DEFAULT_STEPS, CLIPSonicPipeline

__all__ = ["DEFAULT_SAMPLER", "DEFAULT_STEPS", "CLIPSonicPipeline"]
