"""``CLIPSonicPipeline`` (``pipeline.py``) with its queries (``queries.py``: checking, encoding, output
length, seeds), edits (``edits.py``: a source sound to vary, inpaint or continue), outputs (``outputs.py``: audio,
muxed videos, mel images) and paths (``paths.py``: the built-in models, and the folder ``--model`` names)."""

from clipsonic.pipeline.pipeline import DEFAULT_SAMPLER, DEFAULT_STEPS, CLIPSonicPipeline

__all__ = ["DEFAULT_SAMPLER", "DEFAULT_STEPS", "CLIPSonicPipeline"]
