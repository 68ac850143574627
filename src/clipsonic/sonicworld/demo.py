"""``clipsonic demo``: the whole CLIPSonic method on SonicWorld, offline, on 2 CPU cores.

Every step calls the public API the commands call, in the order of the method's data flow:

1. world     :func:`render_world` → ``world/`` (mp4 videos, manifest.csv, captioned pictures)
2. clip      :func:`train_world_clip` → ``clip/`` (an HF ``CLIPModel`` directory + tokenizer)
3. data      :func:`clipsonic.data.preprocess.preprocess` → ``dataset/`` (WebDataset shards)
4. unet      :func:`clipsonic.train.train` → ``run/`` and its exported ``run/pipeline``
5. prior     :func:`clipsonic.prior.train_prior` on the captioned pictures → attached
6. vocoder   a tiny BigVGAN → attached; Griffin-Lim with ``--fast``
7. evaluate  :func:`clipsonic.evaluate.run_evaluation`: FAD (mel-stats), relevance by the oracle,
             held-out captions as the text queries, a guidance sweep
8. gallery   one sample per test concept and mode, with its mel image and the oracle's verdict
9. report    ``report.html`` and ``metrics.json``

Re-running the same command reuses what is complete (each API resumes or confirms its output).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipsonic.audio import MelConfig
from clipsonic.config import Config
from clipsonic.data.clips import ClipOptions
from clipsonic.data.preprocess import PreprocessOptions, preprocess
from clipsonic.diffusion import DEFAULT_GUIDANCE_SCALE
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate import EvalConfig, Evaluation, run_evaluation
from clipsonic.export import attach_clip
from clipsonic.files import write_json_atomic
from clipsonic.prior import attach_prior, train_prior
from clipsonic.sonicworld import report
from clipsonic.sonicworld.clip import WorldClipConfig, train_world_clip
from clipsonic.sonicworld.oracle import OracleClassifier
from clipsonic.sonicworld.world import CONCEPTS, WorldConfig, captions, render_world
from clipsonic.train import train
from clipsonic.vocoder import attach_vocoder, train_vocoder

log = logging.getLogger(__name__)

MODES = ("iq", "zs", "pd", "shift", "knn")


@dataclasses.dataclass(frozen=True)
class DemoConfig(Config):
    """How big each step of the demo is. :func:`demo_config` gives the full and the fast sizes."""

    world: WorldConfig = WorldConfig()
    clip_seconds: float = 1.024  # 32 mel frames: short clips learn fastest on CPUs
    clip_steps: int = 400  # world-CLIP contrastive steps
    # The mel model: the paper's Improved DDPM (learned variance, hybrid loss) with v-prediction,
    # which learned far faster than ε on CPU-sized models (docs/benchmarks.md, benchmarks/bench_recipe.py).
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
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
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

    def step(self, name: str, fn: Callable[[Callable[[float], None]], Any]) -> Any:
        """Run ``fn(update)`` as step ``name``; ``update(fraction)`` reports its progress."""
        self.start(name)
        result = fn(self.update)
        self.finish()
        log.info("demo: %s done in %.0f s", name, self.step_seconds[name])
        return result


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *, fast: bool = False,
             progress: Callable[[DemoProgress], None] | None = None) -> dict[str, Any]:
    """Run every step into ``out_dir``; returns the metrics also written to ``out_dir/metrics.json``."""
    config = config or demo_config(fast)
    out = Path(out_dir)
    if (out / "metrics.json").is_file():
        if report.read_metrics(out)["config"] != config.to_dict():
            raise ClipsonicError(f"{out} holds a demo made with other settings; use a new --out (or delete it)")
    elif out.exists() and any(out.iterdir()):
        raise ClipsonicError(f"{out} exists and is not a demo folder; choose an empty or new --out")
    else:
        report.write_metrics(out, {"config": config.to_dict()})  # marks the folder as this demo's
    clock = _Clock(_expected(config, fast), progress)
    mel = MelConfig().with_clip_seconds(config.clip_seconds)
    pipeline, test_captions = out / "run" / "pipeline", out / "world" / "test_captions.json"

    def world(update: Callable[[float], None]) -> None:
        if not (out / "world" / "manifest.csv").is_file():
            render_world(out / "world", config.world, progress=lambda done, total: update(done / total))
        write_json_atomic(test_captions, {c.name: captions(c, "test") for c in CONCEPTS})  # an evaluate --captions file

    def clip(update: Callable[[float], None]) -> None:
        if not (out / "clip" / "config.json").is_file():
            train_world_clip(out / "clip", config.world, WorldClipConfig(steps=config.clip_steps, seed=config.seed),
                             progress=lambda s, total, _: update(s / total))

    def data(update: Callable[[float], None]) -> None:
        options = PreprocessOptions(clip_model=str(out / "clip"), clips=ClipOptions(keep_audio=True, jpg_size=64),
                                    shard_size_mb=64.0)
        # in-process decoding: with a CLIP this small, worker start-up costs more than it overlaps
        # (benchmarks/bench_preprocess.py: 19.4 videos/s in-process vs 13.0 with 2 workers)
        preprocess(out / "world" / "manifest.csv", out / "dataset", options=options, mel=mel, workers=0,
                   device="cpu", progress=lambda p: update(p.items_done / max(p.items_total, 1)))

    def evaluate(update: Callable[[float], None]) -> Evaluation:
        eval_config = EvalConfig(modes=MODES, guidance_scale=config.guidance_scale, sweep=config.sweep,
                                 steps=config.sample_steps, sampler=config.sampler, embedder="mel-stats",
                                 captions=str(test_captions), seed=config.seed, batch_size=16, device="cpu")
        return run_evaluation(pipeline, out / "dataset", out / "evaluation", eval_config, classifier=OracleClassifier(),
                              progress=lambda done, total, _: update(done / max(total, 1)))

    clock.step("world", world)
    clock.step("clip", clip)
    clock.step("data", data)
    clock.step("unet", lambda update: _unet(out, config, update))
    clock.step("prior", lambda update: _prior(out, config, update))
    if config.vocoder_steps:
        clock.step("vocoder", lambda update: _vocoder(out, config, update))
    attach_clip(pipeline, out / "clip")
    evaluation = clock.step("evaluate", evaluate)
    gallery = clock.step("gallery", lambda update: report.make_gallery(pipeline, out / "world", out / "gallery",
                                                                       config, update))
    metrics = report.collect_metrics(out, config, evaluation, gallery, clock.step_seconds,
                                     time.perf_counter() - clock.began)
    clock.step("report", lambda update: report.write_report(out, metrics, gallery))
    metrics["wall_seconds"] = round(time.perf_counter() - clock.began, 1)
    metrics["step_seconds"] = clock.step_seconds
    report.write_metrics(out, metrics)
    return metrics


def _expected(config: DemoConfig, fast: bool) -> dict[str, float]:
    """Expected seconds of each step: the measured ones of the preset, scaled by the step counts."""
    base, ref = _EXPECTED[fast], demo_config(fast)
    out = dict(base)
    for name, field in (("clip", "clip_steps"), ("unet", "unet_steps"), ("prior", "prior_steps"),
                        ("vocoder", "vocoder_steps")):
        mine, theirs = getattr(config, field), getattr(ref, field)
        out[name] = base[name] * mine / theirs if theirs else (0.7 * mine if mine else 0)
    return out


def _unet(out: Path, config: DemoConfig, update: Callable[[float], None]) -> None:
    if (out / "run" / "pipeline" / "model_index.json").is_file():
        return
    loop = dict(preset=config.preset, batch_size=config.batch_size, lr=config.lr, max_steps=config.unet_steps,
                ema=config.ema, seed=config.seed, num_workers=0, save_every=max(config.unet_steps // 2, 1),
                sample_every=0, val_every=0, log_every=50, sample_steps=config.sample_steps,
                guidance_scale=config.guidance_scale)
    train(out / "dataset", out / "run", {"train": loop, "diffusion": {"prediction": config.prediction}},
          resume=(out / "run" / "config.json").is_file(), progress=lambda s, total, _: update(s / total))


def _prior(out: Path, config: DemoConfig, update: Callable[[float], None]) -> None:
    if not (out / "prior" / "prior" / "config.json").is_file():
        loop = dict(preset=config.prior_preset, max_steps=config.prior_steps, batch_size=config.prior_batch_size,
                    val_every=max(config.prior_steps // 2, 1), save_every=config.prior_steps, log_every=50,
                    seed=config.seed, warmup_steps=min(100, config.prior_steps // 10), sample_steps=25)
        train_prior(out / "world" / "captions", out / "prior", {"train": loop},
                    resume=(out / "prior" / "config.json").is_file(), clip_model=str(out / "clip"), cpu=True,
                    progress=lambda s, total, _: update(s / total))
    attach_prior(out / "run" / "pipeline", out / "prior")


def _vocoder(out: Path, config: DemoConfig, update: Callable[[float], None]) -> None:
    if not (out / "vocoder" / "vocoder" / "config.json").is_file():
        n = config.vocoder_steps
        loop = dict(preset="tiny", max_steps=n, save_every=n, val_every=n, seed=config.seed)
        train_vocoder(out / "dataset", out / "vocoder", {"train": loop},
                      resume=(out / "vocoder" / "config.json").is_file(), progress=lambda s, total, _: update(s / total))
    attach_vocoder(out / "run" / "pipeline", out / "vocoder" / "vocoder")
