"""How far is a StampWorld demo's UNet run? Export one checkpoint, query it with each concept's first test video (IQ)
and first held-out caption (ZS, kNN, and PD once the demo's prior is trained) at the world's 4.096 s, and let the
shipped judge name the results (and rank the right concept among its classes, which moves before the verdicts do).
``--denoising`` also scores the UNet as a diffusion classifier (Li et al. 2023, "Your Diffusion Model is Secretly a
Zero-Shot Classifier"): each real test clip is noised at two levels and denoised under every concept's mean training
embedding; the concept with the least error is its answer. It needs no sampler, vocoder or judge, so it shows whether
the UNet has learned the conditioning at all.

    python benchmarks/bench_stampworld_checkpoint.py --demo /work/stampworld-demo --step 500
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.loader import load_fixed_samples
from clipsonic.diffusion import posterior
from clipsonic.export import attach_clip
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.prior import attach_prior
from clipsonic.stampworld.assets import CONCEPT_NAMES
from clipsonic.stampworld.judge import StampJudge
from clipsonic.stampworld.world import captions
from clipsonic.train import export_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a StampWorld demo folder (clipsonic demo --world stampworld)")
    parser.add_argument("--step", type=int, required=True, help="a checkpoint of its run/")
    parser.add_argument("--denoising", action="store_true", help="also the diffusion-classifier accuracy (~2 min)")
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
        if args.denoising:
            accuracy, rank = denoising_accuracy(pipe, args.demo / "dataset")
            print(f"step {args.step} denoising: {accuracy:.3f} of the test clips (chance {1 / len(CONCEPT_NAMES):.3f}); "
                  f"mean rank of the right concept {rank:.1f}")
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


@torch.no_grad()
def denoising_accuracy(pipe: CLIPSonicPipeline, data: Path, levels: tuple[float, ...] = (0.4, 0.7)) -> tuple[float, float]:
    """Accuracy and mean rank of the concept whose mean training image embedding best denoises each test clip (the
    v/ε/x0 error of the UNet, summed over ``levels`` × T, one noise draw per level shared by all concepts)."""
    info = read_dataset_info(data)
    train, test = load_fixed_samples(info, "train", 10**6), load_fixed_samples(info, "test", 10**6)
    names = sorted(set(train["labels"]))
    conds = torch.stack([torch.nn.functional.normalize(train["cond"][[lab == n for lab in train["labels"]]].mean(0), dim=0)
                         for n in names])  # [K, D]
    x0, diffusion, generator = test["mel"], pipe.diffusion, torch.Generator().manual_seed(0)
    errors = torch.zeros(len(x0), len(names))
    for level in levels:
        t = torch.full((len(x0),), int(level * diffusion.num_timesteps))
        noise = torch.randn(x0.shape, generator=generator)
        xt = diffusion.q_sample(x0, t, noise)
        target = {"epsilon": noise, "x0": x0, "v": posterior.v_from_x0_eps(diffusion.schedule, x0, t, noise)}
        target = target[diffusion.config.prediction]
        for k in range(len(names)):
            out = pipe.unet(xt, t, conds[k].expand(len(x0), -1))[:, :1]
            errors[:, k] += ((out - target) ** 2).mean(dim=(1, 2, 3))
    truth = torch.tensor([names.index(label) for label in test["labels"]])
    rank = (errors < errors[torch.arange(len(x0)), truth][:, None]).sum(1).float()
    return (errors.argmin(1) == truth).float().mean().item(), rank.mean().item()


if __name__ == "__main__":
    main()
