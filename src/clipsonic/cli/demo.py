"""``clipsonic demo [--out DIR] [--fast]``: the whole method on SonicWorld, offline, on a CPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipsonic.cli.options import command
from clipsonic.sonicworld.demo import DemoProgress, run_demo


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "demo", run_demo_command,
        "reproduce the whole pipeline on SonicWorld (offline, 2 CPU cores: ~30 min, --fast ~5 min)",
        "Render SonicWorld (8 concepts that each look and sound their own way, as H.264/AAC videos), train its CLIP, "
        "preprocess the videos, train the mel diffusion model, a prior and (without --fast) a tiny BigVGAN, then "
        "generate every test concept in modes iq/zs/pd/shift/knn and evaluate: relevance by an exact oracle of the "
        "world's sounds, FAD (mel-stats), a guidance sweep and the CLIP's modality gap. Writes DIR/report.html and "
        "DIR/metrics.json. Re-running the same command reuses the finished steps.",
        "clipsonic demo", "clipsonic demo --fast --out /tmp/demo-fast")
    p.add_argument("--out", type=Path, default=Path("sonicworld-demo"), help="output folder (default sonicworld-demo)")
    p.add_argument("--fast", action="store_true", help="smaller world and shorter training, Griffin-Lim vocoder (~5 min)")


def run_demo_command(args: argparse.Namespace) -> None:
    last = {"step": None}

    def progress(p: DemoProgress) -> None:
        left = "estimating" if p.remaining is None else f"about {_minutes(p.remaining)} left"
        end = "\n" if p.step != last["step"] and last["step"] is not None else ""
        last["step"] = p.step
        sys.stderr.write(f"{end}\r[{p.index}/{p.count}] {p.step:<9} {p.fraction:4.0%} · "
                         f"{_minutes(p.elapsed)} elapsed · {left}   ")
        sys.stderr.flush()

    metrics = run_demo(args.out, fast=args.fast, progress=progress)
    sys.stderr.write("\n")
    h = metrics["headline"]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"relevance (chance {metrics['chance']:.3f}): IQ {fmt(h['iq_relevance'])}, ZS {fmt(h['zs_relevance'])}, "
          f"PD {fmt(h['pd_relevance'])}; {metrics['wall_seconds'] / 60:.1f} min")
    print(f"report: {args.out / 'report.html'}  metrics: {args.out / 'metrics.json'}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
