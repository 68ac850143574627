"""The built-in model: a finished ``clipsonic demo``'s whole pipeline directory (with its own CLIP), shipped
inside the package so that ``from_pretrained()`` and ``clipsonic generate`` without ``--model`` load it offline.
Installed with ``python -m clipsonic.builtin DEMO_DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

from clipsonic.errors import ClipsonicError
from clipsonic.export import load_stats, model_card, read_model_index
from clipsonic.files import atomic_directory, read_json, write_bytes_atomic, write_json_atomic
from clipsonic.pipeline.paths import BUILTIN_DIR, PROMPTS_NAME
from clipsonic.pipeline.queries import read_prompts
from clipsonic.sonicworld.demo import TEST_CAPTIONS, read_metrics

log = logging.getLogger(__name__)

MAX_BYTES = 20 * 1024 * 1024
_KEEP_SUFFIXES = (".json", ".safetensors", ".txt", ".md")  # what loading reads, the card and prompts


def builtin_prompts(model_dir: str | os.PathLike | None = None) -> list[str]:
    """Example text queries a model knows (one per line of its ``prompts.txt``; default: the built-in model's)."""
    model_dir = BUILTIN_DIR if model_dir is None else Path(model_dir)
    path = model_dir / PROMPTS_NAME
    if not path.is_file():
        if model_dir == BUILTIN_DIR:
            raise ClipsonicError(f"this clipsonic install has no built-in model ({BUILTIN_DIR} is missing); "
                                 "reinstall clipsonic")
        raise ClipsonicError(f"{model_dir} has no {PROMPTS_NAME} (a list of the texts it knows); its README.md says "
                             "what it was trained on")
    return read_prompts(path)


# A demo's world, by the format of its world.json: the name in the card and the built-in model's folder.
WORLDS = {"clipsonic-world": ("SonicWorld", "sonicworld"), "clipsonic-stampworld": ("StampWorld", "stampworld")}


def install_builtin(demo_dir: str | os.PathLike, target: str | os.PathLike | None = None, *,
                    command: str = "clipsonic demo", griffin_lim: bool = False) -> Path:
    """Copy a finished demo's pipeline (with its bundled CLIP) to ``target`` (default: the built-in folder named
    after its world, ``builtin/sonicworld`` or ``builtin/stampworld``) as a built-in model.

    Adds ``prompts.txt`` (the demo's held-out captions, three per concept) and a model card (rewritten from the
    installed ``model_index.json``, so it lists only the components shipped) with the command and the demo's
    ``metrics.json`` headline, saying which vocoder those numbers used; refuses a pipeline over :data:`MAX_BYTES`.
    ``griffin_lim``: leave the demo's vocoder out, so the model vocodes with Griffin-Lim (chosen
    when the demo's "reconstruction" row shows the CPU-trained vocoder below Griffin-Lim).
    """
    demo_dir = Path(demo_dir)
    source = demo_dir / "run" / "pipeline"
    unfinished = ClipsonicError(f"{demo_dir} is not a finished demo (needs run/pipeline with clip/, "
                                "world/world.json, world/test_captions.json and metrics.json); run `clipsonic demo "
                                "--out DIR` to the end first")
    needed = (source / "clip" / "config.json", demo_dir / "metrics.json", demo_dir / "world" / "world.json",
              demo_dir / TEST_CAPTIONS)
    if not all(p.is_file() for p in needed):
        raise unfinished
    world_format = read_json(demo_dir / "world" / "world.json", "world.json").get("format")
    if world_format not in WORLDS:
        raise ClipsonicError(f"{demo_dir / 'world' / 'world.json'}: unknown world format {world_format!r}")
    title, slug = WORLDS[world_format]
    target = Path(target) if target is not None else BUILTIN_DIR.parent / slug
    test_captions = read_json(demo_dir / TEST_CAPTIONS, "test captions")
    files = [p for p in source.rglob("*") if p.is_file() and p.suffix in _KEEP_SUFFIXES
             and not (griffin_lim and p.relative_to(source).parts[0] == "vocoder")]
    size = sum(p.stat().st_size for p in files)
    if size > MAX_BYTES:
        raise ClipsonicError(f"{source} is {size / 2**20:.1f} MiB; the built-in model must stay under "
                             f"{MAX_BYTES / 2**20:.0f} MiB (use smaller presets)")
    metrics = read_metrics(demo_dir)
    if "headline" not in metrics:
        raise unfinished
    with atomic_directory(target) as tmp:
        for path in files:
            dest = tmp / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        index = read_json(tmp / "model_index.json", "pipeline model_index.json")
        demo_vocoder = index["components"].get("vocoder") is not None  # what the demo's evaluation vocoded with
        index["clip_model"]["model"] = f"{slug}-clip (bundled in clip/)"  # not the demo's local path
        if griffin_lim:
            index["components"]["vocoder"] = None
        write_json_atomic(tmp / "model_index.json", index)
        prompts = [text for texts in test_captions.values() for text in texts[:3]]
        write_bytes_atomic(tmp / PROMPTS_NAME, ("\n".join(prompts) + "\n").encode())
        installed = read_model_index(tmp)
        stats = load_stats(tmp) if installed.component_dir("stats") is not None else None
        card = model_card(installed, stats) + _card(command, metrics, size, griffin_lim, demo_vocoder,
                                                    title, len(test_captions))
        write_bytes_atomic(tmp / "README.md", card.encode())
    log.info("built-in model installed at %s (%.1f MiB)", target, size / 2**20)
    return target


def _card(command: str, metrics: dict, size: int, griffin_lim: bool, demo_vocoder: bool, title: str,
          concepts: int) -> str:
    """The built-in section of the card. ``demo_vocoder``: the demo's pipeline had a trained vocoder, so its
    metrics (measured before installing) vocoded with it, whether or not the built-in model ships it."""
    h, config = metrics.get("headline", {}), metrics.get("config", {})
    recon = metrics.get("table", {}).get("reconstruction", {})
    measured = ("the demo's tiny BigVGAN" + (", not the Griffin-Lim this model ships with" if griffin_lim else "")
                if demo_vocoder else "Griffin-Lim")
    guidance = config.get("guidance_scale", config.get("guidance"))  # the demo config's name, then its older one
    sampling = (f"{config['sampler']} {config['sample_steps']} steps, w = {guidance:g}; "
                if {"sampler", "sample_steps"} <= config.keys() and guidance is not None else "")
    vocoder = ""  # model_card's "Use" already says what the installed folder vocodes with
    if griffin_lim and demo_vocoder:
        vocoder = ("It vocodes with Griffin-Lim: the demo's CPU-trained tiny BigVGAN reconstructed the real mels "
                   f"at FAD {_fmt(recon.get('fad'), 1)} (mel-stats), worse than Griffin-Lim. `clipsonic evaluate "
                   "--model` on this folder measures the model as shipped.")
    install = "python -m clipsonic.builtin DEMO_DIR" + (" --griffin-lim" if griffin_lim else "")
    judge = "the world's judge" if title == "StampWorld" else "oracle classifier"
    licence = (" Its world is made of the recordings and pictures of Debian's tuxpaint-stamps-default (GPL-2)."
               if title == "StampWorld" else "")
    return (f"\n## The built-in {title} model\n\nMade with `{command}` then "
            f"`{install}` ({metrics.get('wall_seconds', 0) / 60:.1f} min on the machine "
            f"that made it; {size / 2**20:.1f} MiB).\n\n"
            f"Relevance on the demo's test videos and held-out captions, as the demo measured it ({sampling}"
            f"vocoded with {measured}; {judge}, chance {_fmt(metrics.get('chance'))}): "
            f"IQ {_fmt(h.get('iq_relevance'))}, ZS {_fmt(h.get('zs_relevance'))}, PD {_fmt(h.get('pd_relevance'))}. "
            f"It knows only {title}'s {concepts} concepts: see `prompts.txt`.{licence} " + vocoder).rstrip() + "\n"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipsonic.builtin", description=install_builtin.__doc__)
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("--target", type=Path, help="default: the built-in folder named after the demo's world")
    parser.add_argument("--griffin-lim", action="store_true", help="leave the demo's vocoder out")
    parser.add_argument("--command", default="clipsonic demo", help="the command that made DEMO_DIR (model card)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(install_builtin(args.demo_dir, args.target, command=args.command, griffin_lim=args.griffin_lim))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
