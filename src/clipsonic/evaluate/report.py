"""Writing an evaluation: ``results.json`` (every number), ``results.md`` (Table 1's layout) and
``guidance_sweep.png`` (FAD, CLAP score and relevance against w, one line per mode)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from clipsonic.files import write_bytes_atomic, write_json_atomic

MODE_TITLES = {
    "iq": "CLIPSonic-IQ (image query)",
    "zs": "CLIPSonic-ZS (text, zero-shot)",
    "pd": "CLIPSonic-PD (text, diffusion prior)",
    "shift": "text + modality-gap shift",
    "knn": "text + nearest image embeddings",
    "reconstruction": "Vocoder reconstruction (upper bound)",
    "reference": "Real audio (reference set)",
}


@dataclasses.dataclass
class SetResult:
    """The numbers of one set of audio: a (mode, w) of generations, the reconstruction or the reference."""

    name: str  # "pd/w1.5", "reconstruction", "reference"
    mode: str  # a query mode, "reconstruction" or "reference"
    guidance: float | None
    clips: int = 0  # audio files that were embedded
    embeddings: int = 0  # embedding frames pooled for FAD
    excluded: list[str] = dataclasses.field(default_factory=list)  # keys left out (NaN audio)
    fad: float | None = None
    clap: float | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    # the classifier's accuracy on the label, overall and per label (None: no classifier / no clip judged)
    relevance: float | None = None
    relevance_by_label: dict[str, float] = dataclasses.field(default_factory=dict)
    relevance_clips: int = 0  # clips judged: labelled, label known to the classifier, audio written
    # the sync measure (IQ and reconstruction on a dataset with frame sequences; None otherwise, and absent from
    # results.json): mean onset F1 against the real audio's onsets, mean |audio-visual offset| in seconds
    onset_f1: float | None = None
    av_offset_s: float | None = None


@dataclasses.dataclass
class Evaluation:
    config: dict[str, Any]
    model: dict[str, Any]
    dataset: dict[str, Any]
    embedder: dict[str, Any]
    clap: dict[str, Any] | None
    sets: list[SetResult]
    notes: list[str]
    classifier: dict[str, Any] | None = None  # name, labels (count), chance; None: no relevance column

    def table_rows(self) -> list[SetResult]:
        """Modes at the table's w (in bridges.MODES order), then reconstruction, then reference."""
        w = float(self.config["guidance_scale"])
        rows = [s for s in self.sets if s.guidance is None or math.isclose(s.guidance, w)]
        return sorted(rows, key=lambda s: list(MODE_TITLES).index(s.mode))

    def sweep(self) -> dict[str, list[SetResult]]:
        """Per mode, its sets ordered by w (only modes generated at more than one w)."""
        by_mode: dict[str, list[SetResult]] = {}
        for s in self.sets:
            if s.guidance is not None:
                by_mode.setdefault(s.mode, []).append(s)
        return {m: sorted(v, key=lambda s: s.guidance) for m, v in by_mode.items() if len(v) > 1}

    def problems(self) -> dict[str, list[str]]:
        """Each problem once, with the names of the sets that have it."""
        found: dict[str, list[str]] = {}
        for s in self.sets:
            for p in s.problems:
                found.setdefault(p, []).append(s.name)
        return found


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_markdown(ev: Evaluation) -> str:
    w = float(ev.config["guidance_scale"])
    lines = [
        "# CLIPSonic evaluation",
        "",
        f"Model `{ev.model.get('path')}`; {ev.dataset.get('clips')} clips of the `{ev.dataset.get('split')}` split "
        f"of `{ev.dataset.get('path')}`; guidance w = {w:g}; steps {ev.config.get('steps') or 'default'}; "
        f"sampler {ev.config.get('sampler') or 'default'}; seed {ev.config.get('seed')}.",
        "",
        f"FAD embedder: {ev.embedder['description']}.",
        f"CLAP score: {ev.clap['description'] if ev.clap else 'not computed (pass --clap-weights)'}.",
    ]
    judged = ev.classifier is not None
    if judged:
        lines.append(f"Relevance: fraction of clips the classifier `{ev.classifier['name']}` labels as their label; "
                     f"chance level 1/{ev.classifier['labels']} = {_fmt(ev.classifier.get('chance'), 3)}.")
    synced = any(s.onset_f1 is not None for s in ev.sets)  # the sync measure: see the notes
    lines += ["", "| System | FAD ↓ | CLAP score ↑ |" + (" relevance ↑ |" if judged else "")
              + (" onset F1 ↑ | AV offset (s) ↓ |" if synced else "") + " clips |",
              "|---|---|---|---|" + ("---|" if judged else "") + ("---|---|" if synced else "")]
    for s in ev.table_rows():
        flag = " ⚠" if s.problems else ""
        relevance = f" {_fmt(s.relevance, 3)} |" if judged else ""
        sync = f" {_fmt(s.onset_f1, 3)} | {_fmt(s.av_offset_s, 3)} |" if synced else ""
        lines.append(f"| {MODE_TITLES.get(s.mode, s.mode)} | {_fmt(s.fad, 2)}{flag} | {_fmt(s.clap, 3)} |{relevance}"
                     f"{sync} {s.clips} |")
    sweep = ev.sweep()
    if sweep:
        scales = sorted({s.guidance for sets in sweep.values() for s in sets})
        lines += ["", f"## Guidance sweep (FAD / CLAP score{' / relevance' if judged else ''})", "",
                  "| Mode | " + " | ".join(f"w = {g:g}" for g in scales) + " |",
                  "|---|" + "---|" * len(scales)]
        for mode, sets in sweep.items():
            cells = {s.guidance: f"{_fmt(s.fad, 2)} / {_fmt(s.clap, 3)}"
                     + (f" / {_fmt(s.relevance, 3)}" if judged else "") for s in sets}
            lines.append(f"| {mode} | " + " | ".join(cells.get(g, "") for g in scales) + " |")
    notes = list(ev.notes) + [f"{', '.join(names)}: {p}" for p, names in ev.problems().items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_sweep(ev: Evaluation, path: str | os.PathLike) -> Path | None:
    """FAD, CLAP score and relevance against w, one line per mode; None when no mode has two or more w."""
    sweep = ev.sweep()
    if not sweep:
        return None
    from matplotlib.figure import Figure  # heavy: loaded only to draw

    metrics = ([("fad", "FAD ↓")] + ([("clap", "CLAP score ↑")] if ev.clap else [])
               + ([("relevance", f"relevance ({ev.classifier['name']}) ↑")] if ev.classifier else []))
    fig = Figure(figsize=(5.2 * len(metrics), 3.8), dpi=100)
    axes = fig.subplots(1, len(metrics), squeeze=False)
    recon = next((s for s in ev.sets if s.mode == "reconstruction"), None)
    for ax, (metric, title) in zip(axes[0], metrics, strict=True):
        for mode, sets in sweep.items():
            points = [(s.guidance, getattr(s, metric)) for s in sets if getattr(s, metric) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=mode.upper())
        if recon is not None and getattr(recon, metric) is not None:
            ax.axhline(getattr(recon, metric), color="gray", linestyle="--", label="reconstruction")
        if metric == "relevance" and ev.classifier.get("chance"):
            ax.axhline(ev.classifier["chance"], color="gray", linestyle=":", label="chance")
        ax.set_xlabel("guidance scale w")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if not ev.embedder.get("comparable", True):
        fig.suptitle(f"FAD on {ev.embedder['name']}: a sanity metric, not comparable with published FADs",
                     fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def write_report(ev: Evaluation, out: str | os.PathLike) -> list[Path]:
    """Write the three report files under ``out``; returns the paths written."""
    out = Path(out)
    results = {"format": "clipsonic-evaluation", "version": 2, **dataclasses.asdict(ev),
               "table": [s.name for s in ev.table_rows()]}
    for s in results["sets"]:  # the sync measure only where it was measured: earlier results read as before
        for name in ("onset_f1", "av_offset_s"):
            if s[name] is None:
                del s[name]
    # NaN and infinity are not JSON: written as null
    write_json_atomic(out / "results.json", json.loads(json.dumps(results), parse_constant=lambda _: None))
    write_bytes_atomic(out / "results.md", format_markdown(ev).encode())
    written = [out / "results.json", out / "results.md", plot_sweep(ev, out / "guidance_sweep.png")]
    return [p for p in written if p is not None]

