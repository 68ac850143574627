"""What ``clipsonic demo`` shows: a gallery (every test concept × query mode), ``metrics.json`` (its one
reader and writer are here) and ``report.html`` (the results table, the gallery with players and mel
images, the guidance sweep and the modality-gap figure)."""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic.encoders import load_clip
from clipsonic.evaluate import Evaluation
from clipsonic.files import (
    atomic_output,
    read_versioned_json,
    write_bytes_atomic,
    write_json_atomic,
)
from clipsonic.media import save_audio
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.plotting import save_mel_image
from clipsonic.sonicworld.clip import heldout_frames, modality_gap
from clipsonic.sonicworld.oracle import OracleClassifier
from clipsonic.sonicworld.world import CONCEPT_NAMES, CONCEPTS, WorldConfig, captions

MODE_NAMES = {"iq": "IQ (image)", "zs": "ZS (text, zero-shot)", "pd": "PD (text + prior)",
              "shift": "text + gap shift", "knn": "text + nearest images"}
METRICS = {"format": "clipsonic-demo", "version": 1}  # heads metrics.json


def read_metrics(demo_dir: str | os.PathLike) -> dict[str, Any]:
    """A demo folder's ``metrics.json``: its ``config`` from the start, every number once finished."""
    return read_versioned_json(Path(demo_dir) / "metrics.json", METRICS["format"], METRICS["version"])


def write_metrics(demo_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    write_json_atomic(Path(demo_dir) / "metrics.json", {**METRICS, **metrics})


def make_gallery(pipeline_dir: Path, world_dir: Path, out: Path, config, progress: Callable[[float], None]) -> dict:
    """One clip per test concept and mode: ``out/<mode>/<concept>.wav`` + ``.png``; returns the index.

    IQ queries with the concept's first test video (its frames' mean embedding, as ``generate
    --video`` does); the text modes with its first held-out caption. The oracle judges each clip.
    """
    pipe = CLIPSonicPipeline.from_pretrained(pipeline_dir, device="cpu")
    oracle = OracleClassifier()
    modes = [m for m in MODE_NAMES if m in pipe.modes]
    videos = [world_dir / "videos" / "test" / f"{name}_0.mp4" for name in CONCEPT_NAMES]
    texts = [captions(c, "test")[0] for c in CONCEPTS]
    items: dict[str, dict[str, dict]] = {name: {} for name in CONCEPT_NAMES}
    accuracy = {}
    for done, mode in enumerate(modes):
        query = {"video": [str(v) for v in videos]} if mode == "iq" else {"text": texts}
        result = pipe(**query, mode=mode, guidance_scale=config.guidance_scale, num_inference_steps=config.sample_steps,
                      sampler=config.sampler, seed=config.seed, seconds=config.clip_seconds)
        verdicts = oracle.classify_audio(result.audios, sample_rate=result.sample_rate)
        accuracy[mode] = float(np.mean(verdicts == np.arange(len(CONCEPTS))))
        for k, name in enumerate(CONCEPT_NAMES):
            wav, png = out / mode / f"{name}.wav", out / mode / f"{name}.png"
            save_audio(wav, result.audios[k], result.sample_rate, warn=False)  # limited, not clipped
            save_mel_image(result.mels[k], result.mel_config, png, title=f"{mode}: {name}")
            items[name][mode] = {"wav": wav.relative_to(out.parent).as_posix(),
                                 "png": png.relative_to(out.parent).as_posix(),
                                 "query": videos[k].name if mode == "iq" else texts[k],
                                 "verdict": CONCEPT_NAMES[verdicts[k]] if verdicts[k] >= 0 else None}
        progress((done + 1) / len(modes))
    return {"modes": modes, "items": items, "accuracy": accuracy}


def collect_metrics(out: Path, config, evaluation: Evaluation, gallery: dict, step_seconds: dict,
                    wall: float) -> dict[str, Any]:
    """Every number of the demo in one JSON-able dict (the evaluation's own files hold more)."""
    w = float(evaluation.config["guidance_scale"])
    table = {s.mode: {"fad": s.fad, "relevance": s.relevance, "clips": s.clips,
                      "relevance_by_label": s.relevance_by_label} for s in evaluation.table_rows()}
    sweep = {mode: {f"{s.guidance:g}": {"fad": s.fad, "relevance": s.relevance} for s in sets}
             for mode, sets in evaluation.sweep().items()}
    iq, zs, pd = (table.get(m, {}).get("relevance") for m in ("iq", "zs", "pd"))
    return {
        "config": config.to_dict(), "guidance": w,
        "chance": 1.0 / len(CONCEPTS), "table": table, "sweep": sweep,
        "gap_closed_by_prior": None if zs is None or pd is None else round(pd - zs, 4),
        "headline": {"iq_relevance": iq, "zs_relevance": zs, "pd_relevance": pd},
        "gallery_accuracy": gallery["accuracy"],
        "modality_gap": modality_gap(load_clip(out / "clip", device="cpu"), config.world),
        "notes": list(evaluation.notes), "step_seconds": dict(step_seconds), "wall_seconds": round(wall, 1),
    }


def modality_gap_figure(clip_dir: Path, world_config: WorldConfig, path: Path) -> None:
    """Held-out frames and captions in the world-CLIP's space, projected on their two principal axes."""
    import matplotlib  # heavy: loaded only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encoder = load_clip(clip_dir, device="cpu")
    frames, labels = heldout_frames(world_config, 8)
    texts = [(t, k) for k, c in enumerate(CONCEPTS) for t in captions(c, "test")]
    img = encoder.encode_images(list(frames)).numpy()
    txt = encoder.encode_texts([t for t, _ in texts]).numpy()
    both = np.concatenate([img, txt])
    centred = both - both.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T  # [N, 2]
    fig, ax = plt.subplots(figsize=(6, 5))
    colours = [np.array(c.colour) / 255 for c in CONCEPTS]
    n = len(img)
    for k, c in enumerate(CONCEPTS):
        ax.scatter(*xy[:n][np.asarray(labels) == k].T, s=14, color=colours[k], edgecolors="k", linewidths=0.3,
                   label=c.name)
        ax.scatter(*xy[n:][np.array([t[1] for t in texts]) == k].T, s=30, marker="x", color=colours[k])
    ax.set_title("world-CLIP: images (dots) and captions (crosses)\nthe two clouds apart = the modality gap")
    ax.set_facecolor("#333")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(out: Path, metrics: dict, gallery: dict) -> Path:
    """``out/report.html`` (relative links to the gallery, the sweep figure and the gap figure)."""
    sweep_png = out / "evaluation" / "guidance_sweep.png"
    if sweep_png.is_file():
        shutil.copyfile(sweep_png, out / "guidance_sweep.png")
    modality_gap_figure(out / "clip", WorldConfig.from_dict(metrics["config"]["world"]), out / "modality_gap.png")
    esc = html.escape
    fmt = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    rows = "".join(
        f"<tr><td>{esc(MODE_NAMES.get(m, m))}</td><td>{fmt(r['relevance'])}</td><td>{fmt(r['fad'], 2)}</td>"
        f"<td>{r['clips']}</td></tr>" for m, r in metrics["table"].items())
    head = "".join(f"<th>{esc(MODE_NAMES[m])}</th>" for m in gallery["modes"])
    cells = []
    for name in CONCEPT_NAMES:
        tds = []
        for m in gallery["modes"]:
            it = gallery["items"][name][m]
            ok = "ok" if it["verdict"] == name else "miss"
            tds.append(f"<td class='{ok}'><img src='{esc(it['png'])}' width='220'><br><audio controls preload='none' "
                       f"src='{esc(it['wav'])}'></audio><br><small>{esc(it['query'])} → oracle: "
                       f"{esc(str(it['verdict']))}</small></td>")
        cells.append(f"<tr><th>{esc(name)}</th>{''.join(tds)}</tr>")
    gap = metrics["modality_gap"]
    gap_text = ", ".join(f"{k} {v:.3f}" for k, v in gap.items() if isinstance(v, float))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>clipsonic demo: SonicWorld</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1500px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:center}} td.ok{{background:#e8f6e8}}
td.miss{{background:#f9e6e6}} small{{color:#555}}</style></head><body>
<h1>CLIPSonic on SonicWorld</h1>
<p>{len(CONCEPTS)} concepts, chance = {metrics['chance']:.3f}. Relevance = the oracle classifier's accuracy
(exact by construction from each concept's pitch and partials). FAD with the mel-stats embedder.
Guidance w = {metrics['guidance']:g}. Wall time {metrics['wall_seconds'] / 60:.1f} min.</p>
<h2>Results (test split, held-out captions for the text modes)</h2>
<table><tr><th>set</th><th>relevance</th><th>FAD (mel-stats)</th><th>clips</th></tr>{rows}</table>
<p>The prior moves relevance from ZS {fmt(metrics['headline']['zs_relevance'])} to PD
{fmt(metrics['headline']['pd_relevance'])}.</p>
<h2>Gallery (one sample per test concept and mode; green: the oracle agrees)</h2>
<table><tr><th>concept</th>{head}</tr>{''.join(cells)}</table>
<h2>Guidance sweep</h2><img src="guidance_sweep.png" width="900">
<h2>The modality gap of the world-CLIP</h2><img src="modality_gap.png" width="500">
<p>{esc(gap_text)}</p>
<h2>Notes</h2><ul>{''.join(f'<li>{esc(n)}</li>' for n in metrics['notes'])}</ul>
</body></html>"""
    write_bytes_atomic(out / "report.html", page.encode())
    return out / "report.html"
