"""What a user gets from a built-in StampWorld model with the shipped defaults (unipc 8, w = 1.5), judged by the shipped
judge: the sounds of held-out captions through PD, the README's "a dog barking", IQ on the pictures the mel model
never trained on in videos of world seeds never rendered, and how near held-out and far prompts lie to what the model
knows (the far-prompt line of `generate`). tests/test_builtin.py asserts floors under these numbers.

    .venv/bin/python benchmarks/bench_builtin.py                       # the default built-in model
    .venv/bin/python benchmarks/bench_builtin.py --model DEMO/run/pipeline --seeds 4
"""

from __future__ import annotations

import argparse
import time

from clipsonic.bridges import FAR_PROMPT_SIMILARITY, familiarity
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.stampworld import CONCEPT_NAMES, CONCEPTS, DEFAULT_STAMPS, StampWorldConfig, captions, make_clip
from clipsonic.stampworld.judge import StampJudge

FAR = ["piano music", "a glass breaking", "rain on a tin roof", "a car engine", "thunder", "wind blowing"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline folder (default: the default built-in model)")
    parser.add_argument("--seeds", type=int, default=2, help="sample seeds per query set")
    parser.add_argument("--world-seeds", type=int, nargs="+", default=[7, 8], help="never-rendered world seeds for IQ")
    args = parser.parse_args()
    pipe = CLIPSonicPipeline.from_pretrained(args.model, device="cpu")
    judge = StampJudge.from_pretrained()

    def named(out, want: list[str]) -> list[str]:  # the wanted names the judge missed
        return [f"{w}->{n}" for n, w in zip(judge.classify(out.audios, out.sample_rate), want, strict=True) if n != w]

    texts = [captions(c, "test")[14] for c in CONCEPT_NAMES]  # "a barking puppy", ...: templates never trained on
    for seed in range(args.seeds):
        misses = named(pipe(text=texts, seed=seed), CONCEPT_NAMES)
        print(f"held-out captions through PD, seed {seed}: {len(texts) - len(misses)} of {len(texts)}; missed {misses}")
    for seed in range(4):
        began = time.perf_counter()
        out = pipe(text="a dog barking", seed=seed)
        print(f'"a dog barking", seed {seed}: {judge.classify(out.audios, out.sample_rate)[0]} '
              f"({time.perf_counter() - began:.2f} s)")
    unseen = [k for k, c in enumerate(CONCEPTS) if c.unseen_picture]
    names = [CONCEPTS[k].name for k in unseen]
    for world_seed in args.world_seeds:
        frames = [make_clip(StampWorldConfig(seed=world_seed), "test", k, 0, DEFAULT_STAMPS)[0][0] for k in unseen]
        for seed in range(args.seeds):
            misses = named(pipe(image=frames, seed=seed), names)
            print(f"IQ on unseen pictures, world seed {world_seed}, seed {seed}: {len(names) - len(misses)} of "
                  f"{len(names)}; missed {misses}")
    known = pipe.known_texts
    held = [t for c in CONCEPT_NAMES for t in captions(c, "test")]
    sims, _ = familiarity(pipe.encoder.encode_texts(held + FAR), pipe.encoder.encode_texts(known))
    print(f"similarity to the known prompts (far below {FAR_PROMPT_SIMILARITY}): held-out captions ≥ "
          f"{float(sims[:len(held)].min()):.3f}; far texts {[round(float(x), 3) for x in sims[len(held):]]}")


if __name__ == "__main__":
    main()
