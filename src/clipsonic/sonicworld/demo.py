"""``clipsonic demo``: the whole CLIPSonic method on a rendered world, offline, on 2 CPU cores.

Each step calls the public API the commands call, in the method's data-flow order; re-running the
same command reuses what is complete. ``metrics.json``'s one reader and writer are here. The steps see
their world only through a :class:`DemoWorld`: SonicWorld's is :func:`sonicworld_demo`, StampWorld's
lives in :mod:`clipsonic.stampworld.demo`.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import os
import shutil
import string
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clipsonic.audio import MelConfig
from clipsonic.config import Config
from clipsonic.data.clips import ClipOptions
from clipsonic.data.preprocess import PreprocessOptions, preprocess
from clipsonic.diffusion import DEFAULT_GUIDANCE_SCALE
from clipsonic.encoders import load_clip
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate import EvalConfig, Evaluation, run_evaluation
from clipsonic.export import attach_clip
from clipsonic.files import lock_folder, read_versioned_json, write_bytes_atomic, write_json_atomic
from clipsonic.media import save_audio
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.plotting import save_mel_image
from clipsonic.prior import attach_prior, train_prior
from clipsonic.sonicworld.clip import Scene, WorldClipConfig, modality_gap, sonicworld_scene, train_world_clip
from clipsonic.sonicworld.clock import Clock, DemoProgress
from clipsonic.sonicworld.oracle import OracleClassifier
from clipsonic.sonicworld.world import CONCEPT_NAMES, CONCEPTS, WorldConfig, captions, render_world
from clipsonic.train import train
from clipsonic.vocoder import attach_vocoder, train_vocoder

log = logging.getLogger(__name__)

MODE_NAMES = {"iq": "IQ (image)", "zs": "ZS (text, zero-shot)", "pd": "PD (text + prior)",
              "shift": "text + gap shift", "knn": "text + nearest images"}
METRICS = {"format": "clipsonic-demo", "version": 1}  # heads metrics.json
GALLERY = {"format": "clipsonic-demo-gallery", "version": 1}  # heads gallery/index.json
PIPELINE, TEST_CAPTIONS = Path("run", "pipeline"), Path("world", "test_captions.json")  # inside the demo folder


def read_metrics(demo_dir: str | os.PathLike) -> dict[str, Any]:
    """A demo folder's ``metrics.json``: its ``config`` from the start, every number once finished."""
    return read_versioned_json(Path(demo_dir) / "metrics.json", METRICS["format"], METRICS["version"])


def write_metrics(demo_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    write_json_atomic(Path(demo_dir) / "metrics.json", {**METRICS, **metrics})


@dataclasses.dataclass(frozen=True)
class DemoConfig(Config):
    """How big each step of the demo is. :func:`demo_config` gives the full and the fast sizes."""

    world: WorldConfig = WorldConfig()
    clip_seconds: float = 1.024  # 32 mel frames: short clips learn fastest on CPUs
    clip_steps: int = 400  # world-CLIP contrastive steps
    clip_image_weight: float = 0.0  # its image-to-image term (WorldClipConfig.image_weight): one picture per concept here
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


class Judge(Protocol):
    """A world's relevance classifier, as ``evaluate`` takes it (e.g. :class:`OracleClassifier`)."""

    name: str
    labels: tuple[str, ...]

    def classify(self, audio: np.ndarray, sample_rate: int) -> list[str | None]:
        """Concept name per clip of ``audio`` ``[B, samples]``, None for no concept."""
        ...


@dataclasses.dataclass(frozen=True)
class DemoWorld:
    """What the demo's steps need of a world. ``render(world_dir, progress)`` writes
    :func:`clipsonic.sonicworld.world.render_world`'s layout (``manifest.csv``, ``videos/test/<name>_<i>.mp4``,
    ``captions/``); the gallery queries each concept with its test video 0 and its first held-out caption."""

    title: str  # in the report: "CLIPSonic on <title>"
    names: tuple[str, ...]  # [K] the concepts rendered, in order
    render: Callable[[Path, Callable[[int, int], None]], Any]
    test_captions: dict[str, list[str]]  # concept name → held-out captions (``evaluate --captions``)
    scene: Scene  # what the world-CLIP learns from
    judge: Callable[[Path], Judge]  # the demo folder → the relevance classifier of evaluate and the gallery
    judge_words: tuple[str, str]  # (its short name, what its accuracy means) for the report
    expected: dict[str, float]  # expected seconds of each step on 2 CPU cores, for the time-left estimate
    train_judge: Callable[[Path, Callable[[float], None]], None] | None = None  # the "judge" step, if any

    @property
    def chance(self) -> float:
        return 1.0 / len(self.names)


def sonicworld_demo(config: DemoConfig, fast: bool = False) -> DemoWorld:
    """SonicWorld as the demo sees it: judged by its exact oracle, which needs no training."""
    return DemoWorld(
        title="SonicWorld", names=CONCEPT_NAMES,
        render=lambda out, progress: render_world(out, config.world, progress=progress),
        test_captions={c.name: captions(c, "test") for c in CONCEPTS}, scene=sonicworld_scene(config.world),
        judge=lambda out: OracleClassifier(),
        judge_words=("oracle", "the oracle classifier's accuracy\n(it hears each concept's pitch, timbre and "
                               "rhythm, templates synthesised exactly)"),
        expected=_expected(config, fast))


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *, fast: bool = False,
             world: DemoWorld | None = None,
             progress: Callable[[DemoProgress], None] | None = None) -> dict[str, Any]:
    """Run every step into ``out_dir`` (locked meanwhile); returns the metrics also written to ``out_dir/metrics.json``.
    ``world``: the world ``config`` describes (default: SonicWorld, :func:`sonicworld_demo`)."""
    config = config or demo_config(fast)
    world = world or sonicworld_demo(config, fast)
    with lock_folder(out_dir, "demo"):
        return _run_demo(Path(out_dir), config, world, progress)


def _run_demo(out: Path, config: DemoConfig, world: DemoWorld,
              progress: Callable[[DemoProgress], None] | None) -> dict[str, Any]:
    if (out / "metrics.json").is_file():
        if read_metrics(out)["config"] != config.to_dict():
            raise ClipsonicError(f"{out} holds a demo made with other settings; use a new --out (or delete it)")
    elif out.exists() and any(out.iterdir()):
        raise ClipsonicError(f"{out} exists and is not a demo folder; choose an empty or new --out")
    else:
        write_metrics(out, {"config": config.to_dict()})  # marks the folder as this demo's
    clock = Clock(world.expected, progress)
    steps = {"world": functools.partial(_world, out, world), "clip": functools.partial(_clip, out, config, world),
             "data": functools.partial(_data, out, config), "unet": functools.partial(_unet, out, config),
             "prior": functools.partial(_prior, out, config)}
    if config.vocoder_steps:
        steps["vocoder"] = functools.partial(_vocoder, out, config)
    if world.train_judge is not None:  # a world without an exact judge trains one before the evaluation
        steps["judge"] = functools.partial(world.train_judge, out)
    for name, step in steps.items():
        clock.step(name, step)
    attach_clip(out / PIPELINE, out / "clip")
    judge = world.judge(out)
    evaluation = clock.step("evaluate", functools.partial(_evaluate, out, config, judge))
    gallery = clock.step("gallery", functools.partial(_gallery, out, config, world, judge))
    metrics = collect_metrics(out, config, world, evaluation, gallery, clock.step_seconds,
                              time.perf_counter() - clock.began)
    clock.step("report", lambda update: write_report(out, metrics, gallery, world))
    metrics["wall_seconds"] = round(time.perf_counter() - clock.began, 1)
    metrics["step_seconds"] = clock.step_seconds
    write_metrics(out, metrics)
    return metrics


def _expected(config: DemoConfig, fast: bool) -> dict[str, float]:
    """Expected seconds of each step: the measured ones of the preset, scaled by the step counts."""
    out, ref = dict(_EXPECTED[fast]), demo_config(fast)
    for name in ("clip", "unet", "prior", "vocoder"):
        mine, theirs = getattr(config, f"{name}_steps"), getattr(ref, f"{name}_steps")
        out[name] = out[name] * mine / theirs if theirs else 0.7 * mine
    return out


# Each step below is ``step(out, ..., update)``, skips or resumes what a previous run finished,
# and reports its progress as ``update(fraction)``.

def _world(out: Path, world: DemoWorld, update: Callable[[float], None]) -> None:
    if not (out / "world" / "manifest.csv").is_file():
        world.render(out / "world", lambda done, total: update(done / total))
    # the held-out captions as an ``evaluate --captions`` file
    write_json_atomic(out / TEST_CAPTIONS, world.test_captions)


def _clip(out: Path, config: DemoConfig, world: DemoWorld, update: Callable[[float], None]) -> None:
    if not (out / "clip" / "config.json").is_file():
        clip = WorldClipConfig(steps=config.clip_steps, image_weight=config.clip_image_weight, seed=config.seed)
        train_world_clip(out / "clip", world.scene, clip, progress=lambda s, total, _: update(s / total))


def _data(out: Path, config: DemoConfig, update: Callable[[float], None]) -> None:
    options = PreprocessOptions(clip_model=str(out / "clip"), clips=ClipOptions(keep_audio=True, jpg_size=64),
                                shard_size_mb=64.0)
    # in-process decoding: with a CLIP this small, worker start-up costs more than it overlaps
    # (benchmarks/bench_preprocess.py: 19.4 videos/s in-process vs 13.0 with 2 workers)
    preprocess(out / "world" / "manifest.csv", out / "dataset", options=options,
               mel=MelConfig().with_clip_seconds(config.clip_seconds), workers=0, device="cpu",
               progress=lambda p: update(p.items_done / max(p.items_total, 1)))


def _finished(run_dir: Path, steps: int) -> bool:
    """Whether a training run reached ``steps``: its checkpoint of that step exists. A stopped run exports its
    component too, so the exported folder alone does not say the run is done."""
    return (run_dir / "checkpoints" / f"step-{steps:07d}").is_dir()


def _unet(out: Path, config: DemoConfig, update: Callable[[float], None]) -> None:
    if _finished(out / "run", config.unet_steps) and (out / PIPELINE / "model_index.json").is_file():
        return
    # a checkpoint every 500 steps at most: an hour-long run killed on the way resumes close to where it was
    loop = dict(preset=config.preset, batch_size=config.batch_size, lr=config.lr, max_steps=config.unet_steps,
                ema=config.ema, seed=config.seed, num_workers=0, save_every=max(min(config.unet_steps // 2, 500), 1),
                sample_every=0, val_every=0, log_every=50, sample_steps=config.sample_steps,
                guidance_scale=config.guidance_scale)
    train(out / "dataset", out / "run", {"train": loop, "diffusion": {"prediction": config.prediction}},
          resume=(out / "run" / "config.json").is_file(), progress=lambda s, total, _: update(s / total))


def _prior(out: Path, config: DemoConfig, update: Callable[[float], None]) -> None:
    if not (_finished(out / "prior", config.prior_steps) and (out / "prior" / "prior" / "config.json").is_file()):
        loop = dict(preset=config.prior_preset, max_steps=config.prior_steps, batch_size=config.prior_batch_size,
                    val_every=max(config.prior_steps // 2, 1), save_every=config.prior_steps, log_every=50,
                    seed=config.seed, warmup_steps=min(100, config.prior_steps // 10), sample_steps=25)
        train_prior(out / "world" / "captions", out / "prior", {"train": loop},
                    resume=(out / "prior" / "config.json").is_file(), clip_model=str(out / "clip"), cpu=True,
                    progress=lambda s, total, _: update(s / total))
    attach_prior(out / PIPELINE, out / "prior")


def _vocoder(out: Path, config: DemoConfig, update: Callable[[float], None]) -> None:
    if not (_finished(out / "vocoder", config.vocoder_steps)
            and (out / "vocoder" / "vocoder" / "config.json").is_file()):
        n = config.vocoder_steps
        loop = dict(preset="tiny", max_steps=n, save_every=n, val_every=n, seed=config.seed)
        train_vocoder(out / "dataset", out / "vocoder", {"train": loop},
                      resume=(out / "vocoder" / "config.json").is_file(),
                      progress=lambda s, total, _: update(s / total))
    attach_vocoder(out / PIPELINE, out / "vocoder" / "vocoder")


def _evaluate(out: Path, config: DemoConfig, judge: Judge, update: Callable[[float], None]) -> Evaluation:
    eval_config = EvalConfig(modes=tuple(MODE_NAMES), guidance_scale=config.guidance_scale, sweep=config.sweep,
                             steps=config.sample_steps, sampler=config.sampler, embedder="mel-stats",
                             captions=str(out / TEST_CAPTIONS), seed=config.seed, batch_size=16, device="cpu")
    return run_evaluation(out / PIPELINE, out / "dataset", out / "evaluation", eval_config,
                          classifier=judge, progress=lambda done, total, _: update(done / max(total, 1)))


def _gallery(out: Path, config: DemoConfig, world: DemoWorld, judge: Judge, update: Callable[[float], None]) -> dict:
    index = out / "gallery" / "index.json"  # written last: the gallery is complete
    if index.is_file():
        return {k: v for k, v in read_versioned_json(index, *GALLERY.values()).items() if k not in GALLERY}
    gallery = make_gallery(out / PIPELINE, out / "world", out / "gallery", config, world, judge, update)
    write_json_atomic(index, {**GALLERY, **gallery})
    return gallery


# --- what the demo shows ----------------------------------------------------------------------

def make_gallery(pipeline_dir: Path, world_dir: Path, out: Path, config: DemoConfig, world: DemoWorld, judge: Judge,
                 progress: Callable[[float], None]) -> dict:
    """One clip per test concept and mode: ``out/<mode>/<concept>.wav`` + ``.png``; returns the index.
    IQ queries with the concept's first test video (its frames' mean embedding, as ``generate
    --video`` does); the text modes with its first held-out caption. ``judge`` names each clip's concept."""
    pipe = CLIPSonicPipeline.from_pretrained(pipeline_dir, device="cpu")
    modes = [m for m in MODE_NAMES if m in pipe.modes]
    videos = [world_dir / "videos" / "test" / f"{name}_0.mp4" for name in world.names]
    texts = [world.test_captions[name][0] for name in world.names]
    items: dict[str, dict[str, dict]] = {name: {} for name in world.names}
    accuracy = {}
    for done, mode in enumerate(modes):
        query = {"video": [str(v) for v in videos]} if mode == "iq" else {"text": texts}
        result = pipe(**query, mode=mode, guidance_scale=config.guidance_scale, num_inference_steps=config.sample_steps,
                      sampler=config.sampler, seed=config.seed, seconds=config.clip_seconds)
        verdicts = list(judge.classify(np.asarray(result.audios), result.sample_rate))
        accuracy[mode] = float(np.mean([v == name for v, name in zip(verdicts, world.names, strict=True)]))
        for k, name in enumerate(world.names):
            wav, png = out / mode / f"{name}.wav", out / mode / f"{name}.png"
            save_audio(wav, result.audios[k], result.sample_rate, warn=False)  # limited, not clipped
            save_mel_image(result.mels[k], result.mel_config, png, title=f"{mode}: {name}")
            items[name][mode] = {"wav": wav.relative_to(out.parent).as_posix(),
                                 "png": png.relative_to(out.parent).as_posix(),
                                 "query": videos[k].name if mode == "iq" else texts[k], "verdict": verdicts[k]}
        progress((done + 1) / len(modes))
    return {"modes": modes, "items": items, "accuracy": accuracy}


def collect_metrics(out: Path, config: DemoConfig, world: DemoWorld, evaluation: Evaluation, gallery: dict,
                    step_seconds: dict, wall: float) -> dict[str, Any]:
    """Every number of the demo in one JSON-able dict (the evaluation's own files hold more)."""
    table = {s.mode: {"fad": s.fad, "relevance": s.relevance, "clips": s.clips,
                      "relevance_by_label": s.relevance_by_label} for s in evaluation.table_rows()}
    sweep = {mode: {f"{s.guidance:g}": {"fad": s.fad, "relevance": s.relevance} for s in sets}
             for mode, sets in evaluation.sweep().items()}
    iq, zs, pd = (table.get(m, {}).get("relevance") for m in ("iq", "zs", "pd"))
    return {
        "config": config.to_dict(), "guidance": float(evaluation.config["guidance_scale"]),
        "chance": world.chance, "table": table, "sweep": sweep,
        "gap_closed_by_prior": None if zs is None or pd is None else round(pd - zs, 4),
        "headline": {"iq_relevance": iq, "zs_relevance": zs, "pd_relevance": pd},
        "gallery_accuracy": gallery["accuracy"],
        "modality_gap": modality_gap(load_clip(out / "clip", device="cpu"), world.scene,
                                     figure=out / "modality_gap.png"),
        "notes": list(evaluation.notes), "step_seconds": dict(step_seconds), "wall_seconds": round(wall, 1),
    }


def write_report(out: Path, metrics: dict, gallery: dict, world: DemoWorld) -> Path:
    """``out/report.html`` from the template beside this module, with relative links to the gallery, the
    sweep figure and the gap figure (drawn by :func:`collect_metrics`)."""
    sweep_png = out / "evaluation" / "guidance_sweep.png"
    if sweep_png.is_file():  # evaluate draws it only for a sweep
        shutil.copyfile(sweep_png, out / "guidance_sweep.png")
    sweep = '<img src="guidance_sweep.png" width="900">' if sweep_png.is_file() else "<p>No sweep (sweep=()).</p>"
    esc = html.escape
    fmt = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    rows = "".join(
        f"<tr><td>{esc(MODE_NAMES.get(m, m))}</td><td>{fmt(r['relevance'])}</td><td>{fmt(r['fad'], 2)}</td>"
        f"<td>{r['clips']}</td></tr>" for m, r in metrics["table"].items())
    head = "".join(f"<th>{esc(MODE_NAMES[m])}</th>" for m in gallery["modes"])
    judge, about = world.judge_words
    text = functools.partial(html.escape, quote=False)  # element text: quotes stay as written

    def cell(name: str, it: dict) -> str:  # green when the judge names the concept
        return (f"<td class='{'ok' if it['verdict'] == name else 'miss'}'><img src='{esc(it['png'])}' width='220'>"
                f"<br><audio controls preload='none' src='{esc(it['wav'])}'></audio><br><small>{esc(it['query'])}"
                f" → {esc(judge)}: {esc(str(it['verdict']))}</small></td>")

    cells = [f"<tr><th>{esc(name)}</th>{''.join(cell(name, gallery['items'][name][m]) for m in gallery['modes'])}</tr>"
             for name in world.names]
    gap = ", ".join(f"{k} {v:.3f}" for k, v in metrics["modality_gap"].items() if isinstance(v, float))
    template = string.Template((resources.files(__package__) / "report.html").read_text("utf-8"))
    page = template.substitute(
        world=text(world.title), judge=text(judge), judge_about=text(about), sweep=sweep,
        concepts=len(world.names), chance=f"{metrics['chance']:.3f}", guidance=f"{metrics['guidance']:g}",
        minutes=f"{metrics['wall_seconds'] / 60:.1f}", rows=rows, zs=fmt(metrics["headline"]["zs_relevance"]),
        pd=fmt(metrics["headline"]["pd_relevance"]), head=head, cells="".join(cells), gap=esc(gap),
        notes="".join(f"<li>{esc(n)}</li>" for n in metrics["notes"]))
    write_bytes_atomic(out / "report.html", page.encode())
    return out / "report.html"
