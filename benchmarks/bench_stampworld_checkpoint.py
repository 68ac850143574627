"""How far is a StampWorld demo's UNet run? Export one checkpoint, query it with each concept's first test video (IQ)
and first held-out caption (ZS, kNN, and PD once the demo's prior is trained) at the world's 4.096 s, and let the
shipped judge name the results (and rank the right concept among its classes, which moves before the verdicts do).

    python benchmarks/bench_stampworld_checkpoint.py --demo /work/stampworld-demo --step 500
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from clipsonic.export import attach_clip
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.prior import attach_prior
from clipsonic.stampworld.assets import CONCEPT_NAMES
from clipsonic.stampworld.judge import StampJudge
from clipsonic.stampworld.world import captions
from clipsonic.train.harness import export_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a StampWorld demo folder (clipsonic demo --world stampworld)")
    parser.add_argument("--step", type=int, required=True, help="a checkpoint of its run/")
    args = parser.parse_args()
    judge = StampJudge.from_pretrained()
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = export_run(args.demo / "run", Path(tmp) / "pipeline", step=args.step)
        attach_clip(pipeline, args.demo / "clip")
        modes = ("iq", "zs", "knn")
        if (args.demo / "prior" / "prior" / "config.json").is_file():  # the demo's prior step has run
            attach_prior(pipeline, args.demo / "prior")
            modes += ("pd",)
        pipe = CLIPSonicPipeline.from_pretrained(pipeline, device="cpu")
        videos = [str(args.demo / "world" / "videos" / "test" / f"{name}_0.mp4") for name in CONCEPT_NAMES]
        texts = [captions(name, "test")[0] for name in CONCEPT_NAMES]
        for mode in modes:
            query = {"video": videos} if mode == "iq" else {"text": texts}
            out = pipe(**query, mode=mode, seed=0, seconds=4.096)
            answers = judge.classify(out.audios, out.sample_rate)
            right = np.mean([a == name for a, name in zip(answers, CONCEPT_NAMES, strict=True)])
            # how many classes (of K + none) the judge prefers to the right one: 0 when right, ~K/2 when unconditioned
            probs = judge.probabilities(torch.from_numpy(out.mels))
            rank = np.mean([(probs[k] > probs[k, k]).sum().item() for k in range(len(CONCEPT_NAMES))])
            print(f"step {args.step} {mode}: {right:.3f} of {len(answers)} (chance {1 / len(CONCEPT_NAMES):.3f}); "
                  f"mean rank of the right concept {rank:.1f}; answers {answers}")


if __name__ == "__main__":
    main()
