"""Does the sound follow the picture? Issue 16's comparison on SonicWorld's event clips: the same tiny UNet, recipe
and steps, conditioned on the mean frame embedding (`seq_cond none`, the paper's) or also on the frame sequence
(`seq_cond film`); each test video is then given to `pipe(video=…)` and the generated audio is scored against the
world's exact event times.

Columns: onset P / R / F1 against every event onset of the clip (±0.1 s, evaluate/sync.py), mean |audio–visual
offset| (onset envelope against the video's own visual activity), relevance (SonicWorld's spectrum oracle; its
strict rhythm test does not apply to event clips, whose pulses are held steady) and FAD (mel-stats) against the real
test audio.

    python benchmarks/bench_sync.py --out /tmp/sync-bench --steps 1500
    python benchmarks/bench_sync.py --out /tmp/sync-bench --steps 1500 --conditions film --reconstruction \\
        --sampling unipc:8:1.5 unipc:25:1.5 unipc:25:3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.data.clips import ClipOptions
from clipsonic.data.preprocess import PreprocessOptions, preprocess
from clipsonic.embedders import load_embedder
from clipsonic.evaluate.sync import SyncConfig, sync_scores
from clipsonic.media import load_audio, load_frames, probe
from clipsonic.metrics import EmbeddingStats, fad_from_stats
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.pipeline.paths import BUILTIN_ROOT
from clipsonic.sonicworld.oracle import OracleClassifier
from clipsonic.sonicworld.world import WorldConfig, render_world
from clipsonic.train.unet import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1500, help="UNet steps of each model")
    parser.add_argument("--frame-rate", type=float, default=8.0)
    parser.add_argument("--clip-seconds", type=float, default=1.024, help="training clips (the videos last 3.072 s)")
    parser.add_argument("--conditions", nargs="+", choices=("none", "film", "xattn"), default=("none", "film"))
    parser.add_argument("--sampling", nargs="+", default=("unipc:8:1.5",), metavar="SAMPLER:STEPS:W",
                        help="one row per sampler, steps and guidance scale (default unipc:8:1.5, the pipeline's)")
    parser.add_argument("--reconstruction", action="store_true",
                        help="also a row for the real test audio's own mel through the pipeline's vocoder: what "
                             "the vocoder and the onset detector leave of a perfect mel")
    args = parser.parse_args()
    samplings = [(name, int(steps), float(w)) for name, steps, w in (s.split(":") for s in args.sampling)]
    world = WorldConfig(events=True)
    if not (args.out / "world" / "manifest.csv").is_file():
        render_world(args.out / "world", world)
    options = PreprocessOptions(clip_model=str(BUILTIN_ROOT / "sonicworld" / "clip"), shard_size_mb=64.0,
                                clips=ClipOptions(keep_audio=True, jpg_size=64, frame_rate=args.frame_rate,
                                                  silence_db=-90.0))  # a clip between events is quiet, not bad
    preprocess(args.out / "world" / "manifest.csv", args.out / "data", options=options, workers=0, device="cpu",
               mel=MelConfig().with_clip_seconds(args.clip_seconds))
    events = json.loads((args.out / "world" / "world.json").read_text())["clips"]
    tests = sorted(rel for rel in events if rel.startswith("videos/test/"))
    real = [load_audio(args.out / "world" / rel, sample_rate=16000) for rel in tests]
    embedder = load_embedder("mel-stats")
    reference = EmbeddingStats.from_embeddings(np.concatenate([embedder.embed(w, 16000) for w in real]))
    oracle = OracleClassifier(strict=False)
    print(f"{len(tests)} test videos of {world.seconds} s, {args.steps} steps per model\n"
          "| condition | sampling | onset P | onset R | onset F1 | mean abs offset s | relevance | FAD mel-stats | "
          "train s |\n|---|---|---|---|---|---|---|---|---|")
    fps = world.fps
    onsets = {rel: np.array(sorted(e["onset_s"] for e in events[rel])) for rel in tests}
    frames = {rel: np.stack(load_frames(args.out / "world" / rel, list(np.arange(
        round(probe(args.out / "world" / rel).duration * fps)) / fps))) for rel in tests}
    labels = [Path(rel).stem.rsplit("_", 1)[0] for rel in tests]

    def row(condition: str, sampling: str, audios: list[np.ndarray], sample_rate: int, seconds: float) -> None:
        rows = [sync_scores(a, sample_rate, onsets[rel], frames=frames[rel], fps=fps, config=SyncConfig())
                for a, rel in zip(audios, tests, strict=True)]
        relevance = np.mean([a == y for a, y in zip(oracle.classify(np.stack(audios), 16000), labels, strict=True)])
        fad = fad_from_stats(reference, EmbeddingStats.from_embeddings(
            np.concatenate([embedder.embed(w, 16000) for w in audios])))
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("onset_precision", "onset_recall", "onset_f1")}
        offset = float(np.mean([abs(r["av_offset_s"]) for r in rows]))
        print(f"| {condition} | {sampling} | {mean['onset_precision']:.3f} | {mean['onset_recall']:.3f} | "
              f"{mean['onset_f1']:.3f} | {offset:.3f} | {relevance:.3f} | {fad:.2f} | {seconds:.0f} |", flush=True)

    for seq_cond in args.conditions:
        run = args.out / f"run-{seq_cond}"
        began = time.perf_counter()
        if not (run / "checkpoints" / f"step-{args.steps:07d}").is_dir():  # a shorter earlier run is resumed
            loop = dict(preset="tiny", batch_size=32, lr=1e-3, max_steps=args.steps, ema=0.999, seed=0, num_workers=0,
                        save_every=min(args.steps, 1500), sample_every=0, val_every=0, log_every=100)
            train(args.out / "data", run, {"train": loop, "unet": {"seq_cond": seq_cond},
                                           "diffusion": {"prediction": "v"}}, resume=(run / "config.json").is_file())
        seconds = time.perf_counter() - began
        pipe = CLIPSonicPipeline.from_pretrained(run / "pipeline", device="cpu")
        for sampler, steps, w in samplings:
            audios = [pipe(video=str(args.out / "world" / rel), mode="iq", seed=0, sampler=sampler,
                           num_inference_steps=steps, guidance_scale=w).audios[0] for rel in tests]
            row(seq_cond, f"{sampler} {steps}, w {w:g}", audios, pipe.sample_rate, seconds)
    if args.reconstruction:  # the last pipeline's vocoder on the real audio's own mel
        with torch.no_grad():
            audios = [pipe.vocoder(mel_spectrogram(torch.from_numpy(w)[None], pipe.mel))[0].numpy()[:len(w)]
                      for w in real]
        row("reconstruction", "real mel", audios, pipe.sample_rate, 0.0)


if __name__ == "__main__":
    main()
