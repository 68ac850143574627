"""``clipsonic demo --world stampworld``: the whole CLIPSonic method on StampWorld's real sounds and pictures.

The steps are :mod:`clipsonic.sonicworld.demo`'s; this module gives them StampWorld as a
:class:`~clipsonic.sonicworld.demo.DemoWorld` (its renders, captions and world-CLIP scene) and one more
step, ``judge``: StampWorld has no exact oracle, so the demo trains the world's judge
(:func:`clipsonic.stampworld.judge.train_judge`, on fresh training-split audio only) into ``OUT/judge``
before evaluating, and the relevance columns are its verdicts.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic.files import atomic_directory
from clipsonic.sonicworld.clip import Scene
from clipsonic.sonicworld.clock import DemoProgress
from clipsonic.sonicworld.demo import MODE_NAMES, DemoConfig, DemoWorld, run_demo
from clipsonic.stampworld.assets import CONCEPT_NAMES, CONCEPTS, find_stamps, load_picture
from clipsonic.stampworld.judge import JUDGE_DIR, JudgeConfig, StampJudge, train_judge
from clipsonic.stampworld.world import StampWorldConfig, captions, make_clip, render_frames, render_stampworld

JUDGE = "judge"  # the judge's folder inside the demo folder


@dataclasses.dataclass(frozen=True)
class StampDemoConfig(DemoConfig):
    """The full StampWorld demo's recipe; :func:`stamp_demo_config` also gives the fast one."""

    world: StampWorldConfig = StampWorldConfig()
    clip_seconds: float = 4.096  # the world's clips whole: real recordings last seconds
    clip_steps: int = 1200  # world-CLIP: after 600 steps (loss 2.72) it put only 0.56 of test videos nearest their concept
    # the world-CLIP's image-to-image term (WorldClipConfig.image_weight): without it, IQ on the test videos whose
    # picture is unseen in training was 0.25 (benchmarks/bench_stampworld_iq.py)
    clip_image_weight: float = 1.0
    # the judge's relevance kept rising after the loss flattened (~2000): IQ 0.781 / 0.812 / 0.865 at 4000 / 6000 / 8000
    unet_steps: int = 8000
    prior_steps: int = 1500
    vocoder_steps: int = 0  # Griffin-Lim
    judge: JudgeConfig = JudgeConfig()


FAST_CONCEPTS = ("dog", "cow", "owl", "cymbal")  # four unlike sounds: a bark, a moo, a hoot, a crash


def stamp_demo_config(fast: bool = False) -> StampDemoConfig:
    """The full StampWorld demo (149 min on 2 CPU cores, the built-in model's run) or ``--fast``: 4 concepts, tiny
    frames, 1-s clips and a few hundred steps in all, a plumbing check that runs in under a minute."""
    if not fast:
        return StampDemoConfig()
    # 1.024-s clips (one per video) and no sweep keep the evaluation to 8 clips × 7 sets
    world = StampWorldConfig(concepts=FAST_CONCEPTS, train_videos_per_concept=6, test_videos_per_concept=2, size=32,
                             fps=2, seconds=1.024, caption_images_per_concept=2)
    return StampDemoConfig(world=world, clip_seconds=1.024, clip_steps=20, unet_steps=40, batch_size=8,
                           prior_steps=40, sample_steps=5, sweep=(),
                           judge=JudgeConfig(clips_per_concept=16, impostors=32, steps=40, batch_size=32, width=8,
                                             crop_frames=(32,)))


def stampworld_scene(world: StampWorldConfig, stamps: str | os.PathLike) -> Scene:
    """StampWorld as a world-CLIP :class:`Scene`: every picture of its concepts on fresh backgrounds, and the
    first frames of its test videos.

    The world-CLIP stands for CLIP's internet pretraining, which had seen dingos as well as dogs; so it learns
    every picture of a concept, the test videos' unseen ones included (a CLIP shown one picture of each concept
    put only 0.48 of the test videos' frames nearest their own concept, none at all for 9 of the 14 concepts whose
    test picture is new). What stays
    unseen is the mel model's and the prior's side: no test video, test-picture frame or held-out caption is in
    their training data, so IQ on test videos measures whether sound learned from a dog carries to a dingo
    through CLIP, as the paper's test videos do."""
    names = world.concept_names
    index = [CONCEPT_NAMES.index(n) for n in names]  # [K] → index in CONCEPTS
    stamps = Path(stamps)

    def picture(k: int, rng: np.random.Generator) -> np.ndarray:
        pictures = CONCEPTS[index[k]].train_pictures + CONCEPTS[index[k]].test_pictures
        return render_frames([load_picture(stamps, pictures[rng.integers(len(pictures))])], rng, world.size)[0]

    return Scene(names=names, size=world.size, seed=world.seed, captions=lambda k, split: captions(index[k], split),
                 picture=picture, test_picture=lambda k, n: make_clip(world, "test", index[k], n, stamps)[0][0])


def stampworld_demo(config: StampDemoConfig, stamps: str | os.PathLike) -> DemoWorld:
    """StampWorld as the demo sees it, with the ``judge`` step that trains its relevance classifier."""
    world = config.world
    shipped = StampJudge.trained_as(JUDGE_DIR, world, config.judge)  # the shipped judge is this one: ~25 min saved

    def judge_step(out: Path, update: Callable[[float], None]) -> None:
        if (out / JUDGE / "model.safetensors").is_file():
            return
        if shipped:
            with atomic_directory(out / JUDGE) as staging:
                shutil.copytree(JUDGE_DIR, staging, dirs_exist_ok=True)
            return
        half = {"render": 0.0, "train": 0.5}  # the judge renders its audio, then trains
        train_judge(out / JUDGE, stamps, world, config.judge,
                    progress=lambda stage, done, total: update(half[stage] + 0.5 * done / total))

    return DemoWorld(
        title="StampWorld", names=world.concept_names,
        render=lambda out, progress: render_stampworld(out, world, stamps, progress),
        test_captions={n: captions(n, "test") for n in world.concept_names}, scene=stampworld_scene(world, stamps),
        judge=lambda out: StampJudge.from_pretrained(out / JUDGE),
        judge_words=("judge", "the accuracy of the world's judge (a small CNN on the log-mel, trained on fresh renders "
                              "of the training split and on impostor sounds, in judge/; below its confidence bar a "
                              "clip counts as no concept)"),
        expected=_expected(config, shipped_judge=shipped),
        train_judge=judge_step)


def _expected(config: StampDemoConfig, shipped_judge: bool = False) -> dict[str, float]:
    """Seconds of each step on 2 CPU cores, for the time-left estimate (which rescales them by this machine's
    pace): per-unit costs of the full recipe's parts (a 0.12-s video render, the tiny UNet's 0.9-s batch-32 step
    of 4-s clips, ...) times the work, plus fixed start-up costs fitted to the fast demo; per-unit costs from the
    built-in model's full run (world 79 s, CLIP 991 s, data 14 s, UNet 7179 s for 8000 steps, evaluation 567 s,
    gallery 65 s).
    ``shipped_judge``: the judge step copies the shipped judge instead of training one."""
    w, j = config.world, config.judge
    k = len(w.concept_names)
    videos = k * (w.train_videos_per_concept + w.test_videos_per_concept)
    pixels = w.num_frames * w.size**2 / (33 * 64**2)  # a video's frames × those of a full-recipe video
    frames = config.clip_seconds / 4.096  # a clip's mel frames × those of a 4-s clip
    test_clips = k * w.test_videos_per_concept * max(1, int(w.seconds / config.clip_seconds))
    sets = 2 + len(MODE_NAMES) * len({config.guidance_scale, *config.sweep})  # reference, reconstruction, modes
    judge_clips = (j.clips_per_concept * k + j.impostors) * w.seconds / 4.096
    return {"world": 2 + 0.11 * videos * pixels, "clip": 4 + 0.0057 * config.clip_steps * k * 6 * (w.size / 64) ** 2,
            "data": 1 + 0.02 * videos, "unet": 3 + 0.9 * config.unet_steps * frames * config.batch_size / 32,
            "prior": 1 + 0.013 * config.prior_steps, "vocoder": 0.4 * config.vocoder_steps,
            "judge": 1.0 if shipped_judge else (1 + 0.012 * judge_clips
                                                + 0.2 * j.steps * j.batch_size / 64 * (j.width / 32) ** 2),
            "evaluate": 3 + 0.014 * test_clips * sets * config.sample_steps * frames,
            "gallery": 5 + k * len(MODE_NAMES) * (0.48 + 0.0025 * config.sample_steps * frames), "report": 2.0}


def run_stampworld_demo(out_dir: str | os.PathLike, config: StampDemoConfig | None = None, *,
                        stamps: str | os.PathLike | None = None, fast: bool = False,
                        progress: Callable[[DemoProgress], None] | None = None) -> dict[str, Any]:
    """:func:`clipsonic.sonicworld.demo.run_demo` on StampWorld. The stamps folder is checked first (see
    :func:`~clipsonic.stampworld.assets.find_stamps`), so a missing package writes nothing."""
    config = config or stamp_demo_config(fast)
    world = stampworld_demo(config, find_stamps(stamps))
    return run_demo(out_dir, config, world=world, progress=progress)
