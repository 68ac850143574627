"""Which diffusion objective learns SonicWorld faster on a CPU: the paper's ε or v-prediction.

Runs the fast demo (``clipsonic demo --fast``: same world, CLIP, data, UNet steps, prior and
evaluation) once per ``--predictions`` value, changing only ``DiffusionConfig.prediction`` (both keep
the paper's learned variance and hybrid loss), and prints per mode the oracle relevance and the
mel-stats FAD at w = 1.5, plus the UNet's training seconds. ``--unet-steps`` shortens or lengthens
the training to see the learning curve.

    .venv/bin/python benchmarks/bench_recipe.py --out /tmp/recipe                 # ε vs v, 400 steps
    .venv/bin/python benchmarks/bench_recipe.py --out /tmp/recipe --unet-steps 200
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clipsonic.sonicworld.demo import demo_config, run_demo

MODES = ("iq", "zs", "pd", "shift", "knn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="working folder (one demo per objective)")
    parser.add_argument("--predictions", nargs="+", default=["epsilon", "v"], choices=["epsilon", "v", "x0"])
    parser.add_argument("--unet-steps", type=int, default=None, help="default: the fast demo's")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = demo_config(fast=True)
    steps = args.unet_steps or base.unet_steps
    rows = []
    for prediction in args.predictions:
        config = base.replace(prediction=prediction, unet_steps=steps)
        metrics = run_demo(args.out / f"{prediction}-{steps}", config)
        rows.append((prediction, metrics))
    print(f"\nfast demo, UNet {steps} steps, w = {base.guidance:g}; relevance (oracle, chance 0.125) / FAD (mel-stats)")
    print(f"{'objective':<10} {'unet s':>7} " + " ".join(f"{m:>14}" for m in MODES) + f" {'reconstr.':>14}")
    for prediction, m in rows:
        cells = [m["table"][k] for k in (*MODES, "reconstruction")]
        print(f"{prediction:<10} {m['step_seconds']['unet']:>7.0f} "
              + " ".join(f"{c['relevance']:>6.2f} / {c['fad']:>5.1f}" for c in cells))


if __name__ == "__main__":
    main()
