"""``clipsonic demo``: the whole CLIPSonic method on SonicWorld, offline, on 2 CPU cores.

Every step calls the public API the commands call, in the order of DESIGN.md's data flow:

1. world     :func:`render_world` → ``world/`` (mp4 videos, manifest.csv, captioned pictures)
2. clip      :func:`train_world_clip` → ``clip/`` (an HF ``CLIPModel`` directory + tokenizer)
3. data      :func:`clipsonic.data.preprocess.preprocess` → ``dataset/`` (WebDataset shards)
4. unet      :func:`clipsonic.train.train` → ``run/`` and its exported ``run/pipeline``
5. prior     :func:`clipsonic.prior.train.train_prior` on the captioned pictures → attached
6. vocoder   :func:`clipsonic.vocoder.train_vocoder` (tiny BigVGAN) → attached; Griffin-Lim with ``--fast``
7. evaluate  :func:`clipsonic.evaluate.run_evaluation`: FAD (mel-stats), relevance by the oracle,
             held-out captions as the text queries, a guidance sweep
8. gallery   one sample per test concept and mode, with its mel image and the oracle's verdict
9. report    ``report.html`` and ``metrics.json``

Re-running the same command reuses what is complete (each API resumes or confirms its output).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipsonic.audio import MelConfig
from clipsonic.config import Config
from clipsonic.errors import ClipsonicError
from clipsonic.files import write_json_atomic
from clipsonic.sonicworld.world import CONCEPTS, WorldConfig, captions

log = logging.getLogger(__name__)

MODES = ("iq", "zs", "pd", "shift", "knn")


class DemoError(ClipsonicError):
    """The demo cannot run here (an output folder in the way, a step that failed)."""


@dataclasses.dataclass(frozen=True)
class DemoConfig(Config):
    """How big each step of the demo is. :func:`demo_config` gives the full and the fast sizes."""

    world: WorldConfig = WorldConfig()
    clip_seconds: float = 1.024  # 32 mel frames: short clips learn fastest on CPUs (REFERENCE.md)
    clip_steps: int = 400  # world-CLIP contrastive steps
    # The mel model: the paper's Improved DDPM (learned variance, hybrid loss) with v-prediction,
    # which learned about twice as fast as ε on CPU-sized models (REFERENCE.md; benchmarks/bench_recipe.py).
    preset: str = "tiny"
    prediction: str = "v"
    unet_steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    ema: float = 0.999
    prior_preset: str = "tiny"
    prior_steps: int = 1500
    prior_batch_size: int = 64
    vocoder_steps: int = 0  # 0: Griffin-Lim (no vocoder training)
    sampler: str = "ddim"
    sample_steps: int = 25
    guidance: float = 1.5
    sweep: tuple[float, ...] = (1.0, 3.0)
    seed: int = 0


def demo_config(fast: bool = False) -> DemoConfig:
    """The full demo (≤ 30 minutes on 2 CPU cores) or ``--fast`` (≤ 5 minutes)."""
    if fast:
        return DemoConfig(world=WorldConfig(train_videos_per_concept=8, test_videos_per_concept=2),
                          clip_steps=150, unet_steps=400, prior_steps=400, vocoder_steps=0, sweep=(3.0,))
    return DemoConfig(vocoder_steps=600)


# Expected seconds of each step on 2 CPU cores (measured), for the time-left estimate.
_EXPECTED = {
    False: {"world": 13, "clip": 50, "data": 10, "unet": 400, "prior": 16, "vocoder": 240, "evaluate": 170,
            "gallery": 10, "report": 2},
    True: {"world": 5, "clip": 37, "data": 12, "unet": 90, "prior": 5, "vocoder": 0, "evaluate": 57,
           "gallery": 10, "report": 2},
}


@dataclasses.dataclass
class DemoProgress:
    """What the progress callback sees: the step, how far it is, and an honest time-left estimate."""

    step: str
    index: int  # 1-based
    count: int
    fraction: float  # of this step, 0..1
    elapsed: float  # seconds since the demo began
    remaining: float | None  # estimated seconds left (None until there is a basis)


class _Clock:
    """Time left = the expected seconds of the remaining work × how slow this machine has been so far."""

    def __init__(self, expected: dict[str, float], callback: Callable[[DemoProgress], None] | None):
        self.expected, self.callback = expected, callback
        self.names = [n for n, s in expected.items() if s > 0]
        self.began = time.perf_counter()
        self.done_expected = 0.0
        self.current = ""
        self.step_seconds: dict[str, float] = {}
        self._step_began = self.began
        self._last = 0.0

    def start(self, name: str) -> None:
        self.current, self._step_began = name, time.perf_counter()
        self.update(0.0, force=True)

    def finish(self) -> None:
        self.step_seconds[self.current] = round(time.perf_counter() - self._step_began, 1)
        self.done_expected += self.expected[self.current]

    def update(self, fraction: float, force: bool = False) -> None:
        now = time.perf_counter()
        if self.callback is None or (not force and now - self._last < 0.5):
            return
        self._last = now
        elapsed = now - self.began
        done = self.done_expected + fraction * self.expected[self.current]
        left = sum(self.expected.values()) - done
        remaining = elapsed / done * left if done > 0 and elapsed > 5 else None
        self.callback(DemoProgress(self.current, self.names.index(self.current) + 1, len(self.names),
                                   min(max(fraction, 0.0), 1.0), elapsed, remaining))


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *, fast: bool = False,
             progress: Callable[[DemoProgress], None] | None = None) -> dict[str, Any]:
    """Run every step into ``out_dir``; returns the metrics also written to ``out_dir/metrics.json``."""
    config = config or demo_config(fast)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "demo.json").is_file():
        raise DemoError(f"{out} exists and is not a demo folder; choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "demo.json"
    if saved.is_file() and json.loads(saved.read_text()) != config.to_dict():
        raise DemoError(f"{out} holds a demo made with other settings; use a new --out (or delete it)")
    write_json_atomic(saved, config.to_dict())
    clock = _Clock(_EXPECTED[fast] if config == demo_config(fast) else _scaled(config, fast), progress)
    mel = MelConfig(clip_samples=round(config.clip_seconds * 16000 / 512) * 512)
    paths = _Paths(out)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        clock.start(name)
        result = fn()
        clock.finish()
        log.info("demo: %s done in %.0f s", name, clock.step_seconds[name])
        return result

    step("world", lambda: _world(paths, config, clock))
    step("clip", lambda: _clip(paths, config, clock))
    step("data", lambda: _data(paths, config, mel, clock))
    step("unet", lambda: _unet(paths, config, clock))
    step("prior", lambda: _prior(paths, config, clock))
    if config.vocoder_steps:
        step("vocoder", lambda: _vocoder(paths, config, clock))
    from clipsonic.export import attach_clip

    attach_clip(paths.pipeline, paths.clip)
    evaluation = step("evaluate", lambda: _evaluate(paths, config, clock))
    from clipsonic.sonicworld import report

    gallery = step("gallery", lambda: report.make_gallery(paths.pipeline, paths.world, out / "gallery", config,
                                                          lambda f: clock.update(f)))
    metrics = report.collect_metrics(out, config, evaluation, gallery, clock.step_seconds,
                                     time.perf_counter() - clock.began)
    step("report", lambda: report.write_report(out, metrics, evaluation, gallery))
    metrics["wall_seconds"] = round(time.perf_counter() - clock.began, 1)
    metrics["step_seconds"] = clock.step_seconds
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _scaled(config: DemoConfig, fast: bool) -> dict[str, float]:
    """Expected seconds for a non-standard config: the preset's, scaled by the step counts."""
    base, ref = _EXPECTED[fast], demo_config(fast)
    out = dict(base)
    for name, field in (("clip", "clip_steps"), ("unet", "unet_steps"), ("prior", "prior_steps"),
                        ("vocoder", "vocoder_steps")):
        mine, theirs = getattr(config, field), getattr(ref, field)
        out[name] = base[name] * mine / theirs if theirs else (0.7 * mine if mine else 0)
    return out


@dataclasses.dataclass(frozen=True)
class _Paths:
    out: Path

    world = property(lambda self: self.out / "world")
    clip = property(lambda self: self.out / "clip")
    dataset = property(lambda self: self.out / "dataset")
    run = property(lambda self: self.out / "run")
    pipeline = property(lambda self: self.out / "run" / "pipeline")
    prior = property(lambda self: self.out / "prior")
    vocoder = property(lambda self: self.out / "vocoder")
    evaluation = property(lambda self: self.out / "evaluation")
    test_captions = property(lambda self: self.out / "world" / "test_captions.json")


def _world(paths: _Paths, config: DemoConfig, clock: _Clock) -> None:
    from clipsonic.sonicworld.world import render_world

    if not (paths.world / "manifest.csv").is_file():
        render_world(paths.world, config.world, progress=lambda done, total: clock.update(done / total))
    write_json_atomic(paths.test_captions, {c.name: captions(c, "test") for c in CONCEPTS})


def _clip(paths: _Paths, config: DemoConfig, clock: _Clock) -> None:
    from clipsonic.sonicworld.clip import train_world_clip

    if (paths.clip / "config.json").is_file() and (paths.clip / "clip_report.json").is_file():
        return
    shutil.rmtree(paths.clip, ignore_errors=True)
    train_world_clip(paths.clip, config.world, steps=config.clip_steps, seed=config.seed,
                     progress=lambda s, total, _: clock.update(s / total))


def _data(paths: _Paths, config: DemoConfig, mel: MelConfig, clock: _Clock) -> None:
    from clipsonic.data.clips import ClipOptions
    from clipsonic.data.preprocess import PreprocessOptions, preprocess

    options = PreprocessOptions(clip_model=str(paths.clip), clips=ClipOptions(keep_audio=True, jpg_size=64),
                                shard_size_mb=64.0)
    # in-process decoding: with a CLIP this small, worker start-up costs more than it overlaps
    # (benchmarks/bench_preprocess.py: 19.4 videos/s in-process vs 13.0 with 2 workers)
    preprocess(paths.world / "manifest.csv", paths.dataset, options=options, mel=mel, workers=0, device="cpu",
               progress=lambda p: clock.update(p.items_done / max(p.items_total, 1)))


def _unet(paths: _Paths, config: DemoConfig, clock: _Clock) -> None:
    from clipsonic.train import train

    if (paths.pipeline / "model_index.json").is_file():
        return
    flags = dict(preset=config.preset, prediction=config.prediction, batch_size=config.batch_size, lr=config.lr,
                 max_steps=config.unet_steps, ema=config.ema, seed=config.seed, num_workers=0,
                 save_every=max(config.unet_steps // 2, 1), sample_every=0, val_every=0, log_every=50,
                 sample_steps=config.sample_steps, guidance_scale=config.guidance)
    resume = (paths.run / "config.json").is_file()
    train(paths.dataset, paths.run, flags=flags, resume=resume,
          progress=lambda s, total, _: clock.update(s / total))


def _prior(paths: _Paths, config: DemoConfig, clock: _Clock) -> None:
    from clipsonic.prior.attach import attach_prior
    from clipsonic.prior.train import PriorTrainConfig, train_prior

    if not (paths.prior / "prior" / "config.json").is_file():
        prior_config = PriorTrainConfig(preset=config.prior_preset, max_steps=config.prior_steps,
                                        batch_size=config.prior_batch_size, val_every=max(config.prior_steps // 2, 1),
                                        save_every=config.prior_steps, log_every=50, seed=config.seed,
                                        warmup_steps=min(100, config.prior_steps // 10), sample_steps=25)
        resume = (paths.prior / "config.json").is_file()
        train_prior(paths.world / "captions", paths.prior, prior_config, resume=resume, clip_model=str(paths.clip),
                    cpu=True, progress=lambda s, total, _: clock.update(s / total))
    attach_prior(paths.pipeline, paths.prior)


def _vocoder(paths: _Paths, config: DemoConfig, clock: _Clock) -> None:
    from clipsonic.vocoder import train_config_for_preset, train_vocoder
    from clipsonic.vocoder.loading import attach_vocoder

    if not (paths.vocoder / "vocoder" / "config.json").is_file():
        n = config.vocoder_steps
        vconfig = train_config_for_preset("tiny", max_steps=n, save_every=n, val_every=n, seed=config.seed)
        resume = paths.vocoder.is_dir() and any(paths.vocoder.iterdir())
        train_vocoder(paths.dataset, paths.vocoder, vconfig, resume=resume,
                      callback=lambda s, total, _: clock.update(s / total))
    attach_vocoder(paths.pipeline, paths.vocoder / "vocoder")


def _evaluate(paths: _Paths, config: DemoConfig, clock: _Clock):
    from clipsonic.evaluate import EvalConfig, run_evaluation

    eval_config = EvalConfig(modes=MODES, guidance=config.guidance, sweep=config.sweep, steps=config.sample_steps,
                             sampler=config.sampler, embedder="mel-stats", classifier="sonicworld",
                             captions=str(paths.test_captions), seed=config.seed, batch_size=16, device="cpu")
    return run_evaluation(paths.pipeline, paths.dataset, paths.evaluation, eval_config,
                          progress=lambda done, total, _: clock.update(done / max(total, 1)))
