"""What an evaluation run does: one frozen config, written into ``results.json``."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from clipsonic.config import Config, NonNegative, PositiveInt, Range, Seed
from clipsonic.diffusion import DEFAULT_GUIDANCE_SCALE


@dataclasses.dataclass(frozen=True)
class EvalConfig(Config):
    """Table 1 and the guidance figure of the paper, on any model and test split."""

    # Query modes to generate with; empty: every mode the model supports (pd needs a prior).
    modes: tuple[Literal["iq", "zs", "pd", "shift", "knn"], ...] = ()
    # The guidance scale w of the table (the paper's best FAD).
    guidance_scale: NonNegative = DEFAULT_GUIDANCE_SCALE
    # Extra guidance scales for the sweep figure (the table's w is always included).
    sweep: tuple[NonNegative, ...] = ()
    # Sampling steps and sampler; None: the pipeline's defaults.
    steps: PositiveInt | None = None
    sampler: str | None = None
    # How test clips longer than the model's training clips are generated (clipsonic.pipeline.edits): overlapping
    # windows averaged at every step, window after window, or one long mel; None: the pipeline's default (windows).
    long: Literal["windows", "continuation", "single"] | None = None
    # How many test clips (spread evenly over the split); None: all. FAD needs two embeddings per set.
    num_clips: Annotated[int, Range(2)] | None = None
    split: str = "test"
    # FAD backbone: "vggish" as the paper; "mel-stats" only checks plumbing.
    embedder: Literal["mel-stats", "vggish", "panns", "clap"] = "vggish"
    embedder_weights: str | None = None
    # LAION-CLAP checkpoint for the CLAP score; None: no CLAP column (unless embedder is "clap").
    clap_weights: str | None = None
    # Clip i is generated with seed + i, the same for every mode and w (common random numbers).
    seed: Seed = 0
    # Text queries: the CLIP query of the text modes and the CLAP text, from the clip's label.
    # The paper does not state its templates; "{label}" uses the class name as is.
    text_template: str = "{label}"
    clap_template: str = "{label}"
    # JSON file {label: [caption, …]}: text modes query clip i with captions[label][i % n] instead
    # of text_template (labels it lacks keep the template); the CLAP text stays clap_template.
    captions: str | None = None
    # Clips per pipeline call.
    batch_size: PositiveInt = 8
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("text_template", "clap_template"):
            template = getattr(self, name)
            try:  # "{label} {x}" or a lone "{" would only fail once the text modes run
                template.format(label="")
            except (KeyError, IndexError, AttributeError, ValueError):
                template = ""
            if "{label}" not in template:
                raise ValueError(f"{name} {getattr(self, name)!r} must contain {{label}} and no other {{…}} "
                                 "(write {{ and }} for braces)")

    @property
    def guidance_scales(self) -> tuple[float, ...]:
        """Every w to generate at, ascending, the table's included."""
        return tuple(sorted({float(self.guidance_scale), *map(float, self.sweep)}))
