"""The strict SonicWorld oracle (spectrum + timbre + rhythm) against the lenient one (spectrum alone).

Three tables. 1. The world's own sound: 8 concepts × ``--per-concept`` held-out test clips, through AAC in mp4 and
back (clipsonic.media.load_audio), at 1.024 s and 3.072 s, and the same after Griffin-Lim with the default vocoder's
settings (GriffinLimConfig: 32 iterations): the fraction named right. 2. Impostors at each concept's f0, 1.024 s:
a rhythm-free sine, the concept's timbre with each rhythm of another kind or rate, each other timbre with the
concept's rhythm, white noise, silence: the fraction still named as some concept. 3. The built-in model: 8 concepts ×
``--seeds`` seeds per mode (iq: a held-out test video's first frame; pd and zs: a held-out caption), relevance on the
generated mels and on its (Griffin-Lim) audio, with what the strict oracle heard where it said no.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_oracle.py                # about a minute on 1 CPU core
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from clipsonic.audio import griffin_lim
from clipsonic.media import load_audio
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.sonicworld import CONCEPTS, NONE, OracleClassifier, WorldConfig, make_clip
from clipsonic.sonicworld.oracle import RHYTHM_NAMES, TIMBRE_NAMES
from clipsonic.sonicworld.video import write_mp4
from clipsonic.sonicworld.world import RHYTHMS, captions, clip_rng, render_frames, synthesize
from clipsonic.vocoder.vocoders import GriffinLimConfig

EVERY = np.arange(len(CONCEPTS))


def decoded_test_clips(seconds: float, per_concept: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Held-out test clips ``[8 * per_concept, samples]`` after an mp4 round trip, and their concepts."""
    config = WorldConfig(seconds=seconds)
    audio, labels = [], []
    for k in EVERY:
        for n in range(per_concept):
            frames, sound = make_clip(config, "test", int(k), n)
            write_mp4(folder / f"{k}_{n}.mp4", frames, sound, fps=config.fps)
            decoded = load_audio(folder / f"{k}_{n}.mp4")[:config.num_samples]
            audio.append(np.pad(decoded, (0, config.num_samples - len(decoded))))
            labels.append(k)
    return np.stack(audio), np.array(labels)


def table_real(strict: OracleClassifier, lenient: OracleClassifier, args) -> None:
    print("\n### The world's own sound (fraction named right)\n")
    print("| clip | audio | clips | lenient | strict |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for seconds in (1.024, 3.072):
            audio, labels = decoded_test_clips(seconds, args.per_concept, Path(folder))
            mels = strict.mels(audio)
            vocoded = strict.mels(griffin_lim(mels, **GriffinLimConfig().to_dict()).numpy())
            for name, m in (("mp4 (AAC) decoded", mels), ("+ Griffin-Lim, 32 iterations", vocoded)):
                print(f"| {seconds:.3f} s | {name} | {len(labels)} | {np.mean(lenient.classify_mels(m) == labels):.3f} "
                      f"| {np.mean(strict.classify_mels(m) == labels):.3f} |", flush=True)


def impostors(seed: int, samples: int = 16384) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def play(pairs):
        return np.stack([synthesize(CONCEPTS[k].f0, t, r, samples, rng) for k, t, r in pairs])

    return {
        "sine at the concept's f0, steady": play([(k, "sine", "steady") for k in EVERY]),
        "concept's timbre, another rhythm": play([(k, c.timbre, r) for k, c in enumerate(CONCEPTS) for r in RHYTHMS
                                                  if r != c.rhythm and not RHYTHMS[r][0] == RHYTHMS[c.rhythm][0]
                                                  == "steady"]),
        "concept's rhythm, another timbre": play([(k, t, c.rhythm) for k, c in enumerate(CONCEPTS) for t in TIMBRE_NAMES
                                                  if t != c.timbre]),
        "white noise (-20 dBFS)": (rng.standard_normal((8, samples)) * 0.1).astype(np.float32),
        "silence": np.zeros((2, samples), np.float32),
    }


def table_impostors(strict: OracleClassifier, lenient: OracleClassifier, args) -> None:
    print("\n### Impostors, 1.024 s (fraction named as some concept; lower is better)\n")
    print("| impostor | clips | lenient | strict |")
    print("|---|---:|---:|---:|")
    for name, audio in impostors(args.seed).items():
        print(f"| {name} | {len(audio)} | {np.mean(lenient.classify_audio(audio) != NONE):.3f} "
              f"| {np.mean(strict.classify_audio(audio) != NONE):.3f} |", flush=True)


def generate(pipe: CLIPSonicPipeline, mode: str, seed: int):
    """One clip per concept from the built-in model: iq from test video ``seed``'s first frame, else caption ``seed``."""
    config = WorldConfig()
    if mode == "iq":
        query = {"image": [render_frames(k, clip_rng(config, "test", int(k), seed)[0], config.size)[0] for k in EVERY]}
    else:
        query = {"text": [captions(c, "test")[seed] for c in CONCEPTS]}
    return pipe(**query, mode=mode, seed=seed)


def table_model(strict: OracleClassifier, lenient: OracleClassifier, args) -> None:
    pipe = CLIPSonicPipeline.from_pretrained("builtin:sonicworld", device="cpu")
    print(f"\n### The built-in model, 8 concepts × {args.seeds} seeds (relevance)\n")
    print("| mode | judged | lenient | strict | strict, per concept (of the seeds) | what the strict oracle heard "
          "in clips the lenient one named right: [timbre, ] rhythm (count) |")
    print("|---|---|---:|---:|---|---|")
    for mode in args.modes:
        outs = [generate(pipe, mode, s) for s in range(args.seeds)]
        labels = np.tile(EVERY, args.seeds)
        for judged, mels in (("mels", torch.from_numpy(np.concatenate([o.mels for o in outs]))),
                             ("audio", strict.mels(np.concatenate([o.audios for o in outs])))):
            loose, hearing = lenient.classify_mels(mels) == labels, strict.hear(mels)
            right = hearing.verdict == labels
            per = " ".join(f"{int(right[labels == k].sum())}" for k in EVERY)
            missed = Counter(f"{CONCEPTS[k].name} ({CONCEPTS[k].rhythm}) → "
                             f"{'' if TIMBRE_NAMES[t] == CONCEPTS[k].timbre else TIMBRE_NAMES[t] + ', '}"
                             f"{RHYTHM_NAMES[r] if r >= 0 else 'rhythm untold'}"
                             for k, t, r, ok, seen in zip(labels, hearing.timbre, hearing.rhythm, right, loose,
                                                          strict=True) if seen and not ok)
            print(f"| {mode} | {judged} | {loose.mean():.3f} | {right.mean():.3f} | {per} | "
                  f"{'; '.join(f'{what} ({n})' for what, n in sorted(missed.items()))} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-concept", type=int, default=8, help="held-out test clips per concept")
    ap.add_argument("--seeds", type=int, default=4, help="built-in model clips per concept and mode")
    ap.add_argument("--modes", nargs="+", default=["iq", "pd", "zs"])
    ap.add_argument("--seed", type=int, default=0, help="the impostors' random stream")
    ap.add_argument("--parts", nargs="+", default=["real", "impostors", "model"])
    args = ap.parse_args()
    start = time.perf_counter()
    strict, lenient = OracleClassifier(), OracleClassifier(strict=False)
    for part in args.parts:
        {"real": table_real, "impostors": table_impostors, "model": table_model}[part](strict, lenient, args)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
