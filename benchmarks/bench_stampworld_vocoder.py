"""Griffin-Lim or a BigVGAN for StampWorld? Reconstruct every real test clip's log-mel with each vocoder and score the
results as the demo scores generations: the shipped judge's accuracy, FAD (mel-stats) against the real test audio,
and the log-mel L1 of the reconstruction against the original mel.

    clipsonic train-vocoder DEMO/dataset --out VOC --preset tiny --threads 1 --max-time 25m
    python benchmarks/bench_stampworld_vocoder.py --data DEMO/dataset --vocoder VOC
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from clipsonic.audio import mel_spectrogram
from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.loader import iter_split
from clipsonic.embedders import load_embedder
from clipsonic.metrics import EmbeddingStats, fad_from_stats
from clipsonic.stampworld.judge import StampJudge
from clipsonic.vocoder import GriffinLimVocoder, load_vocoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a StampWorld dataset with audio (the demo's)")
    parser.add_argument("--vocoder", type=Path, action="append", default=[], help="a trained vocoder (repeatable)")
    args = parser.parse_args()
    info = read_dataset_info(args.data)
    samples = list(iter_split(info, "test", ("mel.npy", "json", "flac")))
    logmels = torch.from_numpy(np.stack([s["mel.npy"] for s in samples]))  # [N, 64, F]
    labels = [s["json"]["label"] for s in samples]
    real = [s["flac"] for s in samples]
    judge, embedder = StampJudge.from_pretrained(), load_embedder("mel-stats")
    reference = EmbeddingStats.from_embeddings(np.concatenate([embedder.embed(w, info.mel.sample_rate) for w in real]))

    def score(name: str, audio: list[np.ndarray], seconds: float) -> None:
        answers = judge.classify(np.stack(audio), info.mel.sample_rate)
        accuracy = np.mean([a == y for a, y in zip(answers, labels, strict=True)])
        stats = EmbeddingStats.from_embeddings(np.concatenate([embedder.embed(w, info.mel.sample_rate) for w in audio]))
        again = mel_spectrogram(torch.from_numpy(np.stack(audio)).float(), info.mel)
        l1 = (again - logmels).abs().mean().item()
        print(f"| {name} | {accuracy:.3f} | {fad_from_stats(reference, stats):.2f} | {l1:.3f} | {seconds:.1f} |")

    print(f"{len(samples)} test clips of {info.mel.clip_seconds} s\n| audio | judge | FAD mel-stats | mel L1 | s |\n|---|---|---|---|---|")
    score("real", real, 0.0)
    vocoders = [("Griffin-Lim", GriffinLimVocoder(info.mel))]
    vocoders += [(f"BigVGAN {path.name}", load_vocoder(path, device="cpu")) for path in args.vocoder]
    for name, vocoder in vocoders:
        began = time.perf_counter()
        with torch.no_grad():
            audio = [vocoder(m[None])[0].numpy() for m in logmels]
        score(name, audio, time.perf_counter() - began)


if __name__ == "__main__":
    main()
