"""Peak levels of generated audio per mode and guidance weight w, with and without the guidance rescale.

The built-in SonicWorld model generates one clip per query: the held-out captions of its prompts.txt (three per
concept) for the text modes, and three training-frame embeddings per concept (its stats bank) for iq. For each
(mode, w, rescale) row: the largest waveform peak, the fraction of clips over full scale (save_audio scales those
down), the mean and largest gain in dB that scaling takes off, the median peak in dBFS, the mels' dynamic range
(mean over clips of the 99th minus the 5th percentile of the log-mel, in dB), which a level fix must not crush,
and the oracle's relevance on the generated mels (the concept heard is the prompt's), which it must not lower.
At w = 1 guidance is the conditional model alone and the rescale has nothing to do: one row.
Rescale 0 is the behaviour before clipsonic.diffusion.guidance.rescaled_guidance (only the [-1, 1] clamp of x_0).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_levels.py     # zs pd shift knn iq, w 1, 1.5, 3, generate's sampler
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_levels.py --sampler ddim --steps 25   # the table of 2026-11-29
    .venv/bin/python benchmarks/bench_levels.py --modes zs pd --weights 1 1.5 3 --seconds 4.096
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from clipsonic.diffusion import SAMPLERS
from clipsonic.pipeline import DEFAULT_SAMPLER, DEFAULT_STEPS, CLIPSonicPipeline
from clipsonic.pipeline.pipeline import DEFAULT_GUIDANCE_RESCALE
from clipsonic.sonicworld import OracleClassifier
from clipsonic.sonicworld.world import CONCEPT_NAMES, CONCEPTS, captions

PER_CONCEPT = 3


def queries(pipe: CLIPSonicPipeline, mode: str) -> tuple[dict, list[int]]:
    """The pipeline's query keyword for ``mode`` and each row's concept index."""
    if mode != "iq":
        return {"text": [t for c in CONCEPTS for t in captions(c, "test")[:PER_CONCEPT]]}, \
            [k for k in range(len(CONCEPTS)) for _ in range(PER_CONCEPT)]
    labels = list(pipe.stats.bank_labels)
    rows = [i for name in CONCEPT_NAMES for i in [j for j, label in enumerate(labels) if label == name][:PER_CONCEPT]]
    return {"image_embeds": pipe.stats.image_bank[rows].float()}, [CONCEPT_NAMES.index(labels[i]) for i in rows]


def row(pipe: CLIPSonicPipeline, oracle: OracleClassifier, mode: str, w: float, rescale: float, args) -> str:
    query, concepts = queries(pipe, mode)
    out = pipe(**query, mode=mode, guidance_scale=w, num_inference_steps=args.steps, sampler=args.sampler,
               seed=args.seed,
               seconds=args.seconds, guidance_rescale=rescale)
    peaks = np.abs(out.audios).max(axis=1)  # [B]
    scaled = 20 * np.log10(np.maximum(peaks, 1.0))  # what save_audio takes off each clip, dB
    over = scaled > 0
    logmel = torch.from_numpy(out.mels).flatten(1).double()  # [B, n_mels * frames], ln of magnitude
    spread = 20 / np.log(10) * (torch.quantile(logmel, 0.99, dim=1) - torch.quantile(logmel, 0.05, dim=1)).mean()
    relevance = float(np.mean(oracle.classify_mels(torch.from_numpy(out.mels)) == np.array(concepts)))
    return (f"| {mode} | {w:g} | {rescale:g} | {peaks.max():.2f} | {over.sum()}/{len(peaks)} | "
            f"{scaled[over].mean() if over.any() else 0:.1f} | {scaled.max():.1f} | "
            f"{20 * np.log10(np.median(peaks)):.1f} | {spread:.0f} | {relevance:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["zs", "pd", "shift", "knn", "iq"])
    ap.add_argument("--weights", nargs="+", type=float, default=[1.0, 1.5, 3.0])
    ap.add_argument("--sampler", choices=list(SAMPLERS), default=DEFAULT_SAMPLER, help="(default: generate's)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="(default: generate's)")
    ap.add_argument("--seconds", type=float, help="clip length (default: the model's training clip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rescales", nargs="+", type=float, default=[0.0, DEFAULT_GUIDANCE_RESCALE],
                    help=f"guidance rescale strengths (default 0 and the pipeline's {DEFAULT_GUIDANCE_RESCALE:g})")
    args = ap.parse_args()
    start = time.perf_counter()
    pipe, oracle = CLIPSonicPipeline.from_pretrained("builtin:sonicworld", device="cpu"), OracleClassifier()
    print("| mode | w | rescale | max peak | clips > 1.0 | mean dB scaled down | max dB | median peak dBFS | mel range dB | relevance |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for w in args.weights:
            for rescale in args.rescales[:1] if w == 1 else args.rescales:
                print(row(pipe, oracle, mode, w, rescale, args), flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s; {args.sampler} {args.steps} steps, seed {args.seed}, "
          f"{args.seconds or pipe.mel.clip_seconds:g}-s clips, Griffin-Lim (the built-in model's vocoder)")


if __name__ == "__main__":
    main()
