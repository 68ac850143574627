"""Long sounds, variations, inpainting and continuation on the built-in SonicWorld model, judged by the world's
oracle (which concept a 1.024-s window sounds like) and a seam measure.

Seams: the log-mel frame-to-frame distance d_f = ||m[:, f+1] - m[:, f]||_2 at the joins (the window boundaries on the
long-sound grid, the end of the kept audio for a continuation) against the same statistic everywhere else ("inside"):
a join without a seam is within the inside range (its ratio near 1). Relevance: the oracle's concept of every
1.024-s window equals the query's.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_edit.py                    # all parts, 60-s long sounds
    .venv/bin/python benchmarks/bench_edit.py --parts long --seconds 20 --plot docs/variations.png
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.pipeline.edits import edge_frames
from clipsonic.sonicworld import OracleClassifier
from clipsonic.sonicworld.world import CONCEPTS, captions

WINDOW = 32  # mel frames of one 1.024-s training clip


def window_concepts(oracle: OracleClassifier, mel: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """The oracle's concept of each whole WINDOW-frame window of ``mel`` [M, F] between frames start and stop."""
    stop = mel.shape[-1] if stop is None else stop
    cuts = [mel[:, f:f + WINDOW] for f in range(start, stop - WINDOW + 1, WINDOW)]
    return oracle.classify_mels(torch.from_numpy(np.stack(cuts)))


def steps_between(mel: np.ndarray) -> np.ndarray:
    """d_f = ||m[:, f+1] - m[:, f]|| for f = 0 … F-2."""
    return np.linalg.norm(np.diff(mel, axis=-1), axis=0)


def seam_ratio(mel: np.ndarray, joins: list[int]) -> tuple[float, float, float, float]:
    """Mean d at the joins (frame j-1 → j), mean d elsewhere, their ratio, and the fraction of the d's elsewhere that
    are at least the joins' mean (a join inside the within-window range: not near 0)."""
    d = steps_between(mel)
    at = np.zeros(len(d), bool)
    at[[j - 1 for j in joins if 0 < j < len(d) + 1]] = True
    return (float(d[at].mean()), float(d[~at].mean()), float(d[at].mean() / d[~at].mean()),
            float(np.mean(d[~at] >= d[at].mean())))


def part_long(pipe, oracle, args) -> None:
    texts = [captions(c, "test")[0] for c in CONCEPTS]
    print(f"\n### Long sounds: {args.seconds:g} s, one text per concept (pd), {len(texts)} queries\n")
    print("| method | windows relevant | d at joins | d inside | ratio | inside d >= joins' | s per query |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for long in ("windows", "continuation", "single"):
        start = time.perf_counter()
        out = pipe(text=texts, seconds=args.seconds, long=long, seed=args.seed)
        took = (time.perf_counter() - start) / len(texts)
        hits, stats = [], []
        for k, mel in enumerate(out.mels):
            hits += list(window_concepts(oracle, mel) == k)
            stats.append(seam_ratio(mel, list(range(WINDOW // 2, mel.shape[-1], WINDOW // 2))))
        at, inside, ratio, above = np.mean(stats, axis=0)
        print(f"| {long} | {np.mean(hits):.3f} ({len(hits)}) | {at:.2f} | {inside:.2f} | {ratio:.2f} | {above:.2f} | "
              f"{took:.1f} |", flush=True)


def source_clips(pipe, seconds: float, seed: int) -> np.ndarray:
    """One generated clip per concept [8, samples] (pd, the first held-out caption): the sources edited below."""
    return pipe(text=[captions(c, "test")[0] for c in CONCEPTS], seconds=seconds, seed=seed).audios


def part_variations(pipe, oracle, args) -> None:
    sources = source_clips(pipe, 1.024, args.seed)
    targets = [(k + 1) % len(CONCEPTS) for k in range(len(CONCEPTS))]  # each source towards the next concept
    print("\n### Variations: concept k's clip + the text of concept k+1, by strength (pd)\n")
    print("| strength | relevant to the new text | still the source's concept | mel distance to the source (dB rms) |")
    print("|---:|---:|---:|---:|")
    curve = []
    for strength in args.strengths:
        new, same, dist = [], [], []
        for k, audio in enumerate(sources):
            out = pipe(text=captions(CONCEPTS[targets[k]], "test")[0], audio=audio, strength=strength, seed=args.seed)
            ref = pipe(text=captions(CONCEPTS[k], "test")[0], audio=audio, strength=0.0, seed=args.seed).mels[0]
            concept = window_concepts(oracle, out.mels[0])[0]
            new.append(concept == targets[k])
            same.append(concept == k)
            dist.append(20 / np.log(10) * float(np.sqrt(np.mean((out.mels[0] - ref) ** 2))))
        curve.append((strength, np.mean(new), np.mean(same), np.mean(dist)))
        print(f"| {strength:g} | {np.mean(new):.2f} | {np.mean(same):.2f} | {np.mean(dist):.1f} |", flush=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s, new, same, dist = map(np.array, zip(*curve, strict=True))
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(s, new, "o-", label="relevant to the new text")
        ax.plot(s, same, "s-", label="still the source's concept")
        ax.set_xlabel("strength")
        ax.set_ylabel("fraction of clips (oracle)")
        ax.set_ylim(-0.05, 1.05)
        twin = ax.twinx()
        twin.plot(s, dist, "^--", color="grey", label="distance to the source")
        twin.set_ylabel("mel distance to the source (dB rms)")
        ax.set_title("Variations (SDEdit) on the built-in model")
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")


def part_inpaint(pipe, oracle, args) -> None:
    sources = source_clips(pipe, 3.072, args.seed)  # 96 frames: keep 0-32, refill 32-64, keep 64-96
    print("\n### Inpainting and continuation (pd)\n")
    print("| edit | kept region max abs diff (log-mel) | filled windows relevant | d at joins | d inside | ratio | "
          "inside d >= joins' |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    seconds = WINDOW * pipe.mel.hop_length / pipe.sample_rate
    edge = edge_frames(pipe.mel)  # a continuation regenerates the source's last frames (they saw its edge)
    for name, text_of, kwargs, kept, filled, joins in (
            ("refill 1.024-2.048 s, same concept", lambda k: k,
             {"mask": (seconds, 2 * seconds)}, [(0, WINDOW), (2 * WINDOW, 3 * WINDOW)], (WINDOW, 2 * WINDOW),
             [WINDOW, 2 * WINDOW]),
            ("refill 1.024-2.048 s with the next concept", lambda k: (k + 1) % len(CONCEPTS),
             {"mask": (seconds, 2 * seconds)}, [(0, WINDOW), (2 * WINDOW, 3 * WINDOW)], (WINDOW, 2 * WINDOW),
             [WINDOW, 2 * WINDOW]),
            ("continue 3.072 s to 6.144 s, same concept", lambda k: k, {"seconds": 6 * seconds},
             [(0, 3 * WINDOW - edge)], (3 * WINDOW, 6 * WINDOW), [3 * WINDOW - edge])):
        diffs, hits, stats = [], [], []
        for k, audio in enumerate(sources):
            ref = pipe(text=captions(CONCEPTS[k], "test")[0], audio=audio, strength=0.0, seed=args.seed).mels[0]
            out = pipe(text=captions(CONCEPTS[text_of(k)], "test")[0], audio=audio, seed=args.seed, **kwargs).mels[0]
            diffs += [float(np.abs(out[:, a:b] - ref[:, a:b]).max()) for a, b in kept]
            hits += list(window_concepts(oracle, out, *filled) == text_of(k))
            stats.append(seam_ratio(out, joins))
        at, inside, ratio, above = np.mean(stats, axis=0)
        print(f"| {name} | {max(diffs):.2e} | {np.mean(hits):.3f} ({len(hits)}) | {at:.2f} | {inside:.2f} | "
              f"{ratio:.2f} | {above:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["long", "variations", "inpaint"],
                    choices=["long", "variations", "inpaint"])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the long sounds (default 60)")
    ap.add_argument("--strengths", nargs="+", type=float, default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ap.add_argument("--plot", help="write the variations plot here (PNG)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    pipe, oracle = CLIPSonicPipeline.from_pretrained("builtin:sonicworld", device="cpu"), OracleClassifier()
    for part in args.parts:
        {"long": part_long, "variations": part_variations, "inpaint": part_inpaint}[part](pipe, oracle, args)
    print(f"\n{time.perf_counter() - start:.0f} s; generate's default sampler and steps, seed {args.seed}, Griffin-Lim")


if __name__ == "__main__":
    main()
