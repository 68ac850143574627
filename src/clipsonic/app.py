"""``clipsonic app``: a local web page (gradio) over :class:`CLIPSonicPipeline`. Text, a picture or a silent video
in; candidates out, each with its player, mel, seed, sidecar and the training clips its condition landed nearest.

The page holds no generation logic: each Generate or Compare press is one
:func:`clipsonic.pipeline.outputs.generate_files` call per mode, the same call ``clipsonic generate`` makes, into the
next numbered folder (``0001/``, ``0002/`` …) of the output folder. So a candidate with seed S is the clip
``clipsonic generate --seed S`` makes with the same settings, and its sidecar replays with ``--from``. Generations run
one at a time per app (a queue; the page shows the place and a progress bar).
"""

from __future__ import annotations

import html
import itertools
import logging
import os
import re
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsonic import bridges
from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.loader import iter_split
from clipsonic.diffusion import SAMPLERS
from clipsonic.errors import ClipsonicError, one_line
from clipsonic.export import model_card, read_model_index
from clipsonic.files import safe_name
from clipsonic.media import save_audio
from clipsonic.pipeline import edits, queries
from clipsonic.pipeline.outputs import generate_files

log = logging.getLogger(__name__)
MAX_CANDIDATES = 8  # result slots on the page (Compare fills one per text mode: at most 4)
NEAREST = 3  # training clips shown per result
KINDS = ("text", "image", "video")


class Studio:
    """What the page calls: a loaded pipeline, its output folder and (optionally) its training clips' audio.

    ``sidecar``: what every clip's sidecar says about the model (:func:`clipsonic.pipeline.outputs.model_sidecar`);
    ``dataset``: the preprocessed dataset the pipeline's embedding bank came from, to play the nearest clips."""

    def __init__(self, pipe, out: str | os.PathLike, sidecar: dict[str, Any], *, model_dir: str | os.PathLike,
                 dataset: str | os.PathLike | None = None) -> None:
        self.pipe, self.out, self.sidecar = pipe, Path(out), sidecar
        self.model_dir = Path(model_dir)
        self.clips = {} if dataset is None else training_clips(dataset, pipe)
        self._numbering = threading.Lock()

    def card(self) -> str:
        """The model card: the pipeline's README.md (written at export), else one made from its model_index.json."""
        readme = self.model_dir / "README.md"
        if readme.is_file():
            return readme.read_text(encoding="utf-8")
        return model_card(read_model_index(self.model_dir), self.pipe.stats)

    def prompts(self) -> list[str]:
        """Example text queries the model knows (its ``prompts.txt``; none for a pipeline without one)."""
        path = self.model_dir / "prompts.txt"
        return queries.read_prompts(path) if path.is_file() else []

    def settings(self) -> dict[str, Any]:
        """The sampling settings a call runs with by default (a distilled pipeline: its own, fixed)."""
        return self.pipe.sampling()

    def generate(self, kind: str, text: str | None, image: str | None, video: str | None, negative: str | None, *,
                 mode: str, count: int, seed: int, settings: dict[str, Any],
                 progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """``count`` candidates for the query of ``kind`` (seeds ``seed`` … ``seed + count - 1``); see :meth:`_run`."""
        query = self._query(kind, text, image, video)
        call = {"mode": None if mode == "auto" else mode, "negative_text": (negative or "").strip() or None, **settings}
        return self._run(query, [("", call)], count, seed, progress)

    def compare(self, text: str | None, negative: str | None, *, seed: int, settings: dict[str, Any],
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """The same text with the same seed in every text mode the pipeline runs, one candidate each."""
        query = self._query("text", text, None, None)
        modes = [m for m in self.pipe.modes if m in bridges.TEXT_MODES]
        negative = (negative or "").strip() or None
        return self._run(query, [(m, {"mode": m, "negative_text": negative, **settings}) for m in modes], 1, seed,
                         progress)

    def _query(self, kind: str, text: str | None, image: str | None, video: str | None) -> queries.Query:
        value = {"text": text, "image": image, "video": video}.get(kind)
        if kind not in KINDS:
            raise ClipsonicError(f"unknown query kind {kind!r}; choose one of {list(KINDS)}")
        if value is None or (kind == "text" and not value.strip()):
            what = {"text": "type what you want to hear", "image": "upload or paste a picture",
                    "video": "upload a video"}[kind]
            raise ClipsonicError(f"no {kind} query: {what}")
        return queries.parse_query(**{kind: value})

    def _run(self, query: queries.Query, calls: list[tuple[str, dict[str, Any]]], count: int, seed: int,
             progress: Callable[[int, int], None] | None) -> list[dict[str, Any]]:
        """One :func:`generate_files` per ``(label, call)`` into the next numbered folder (a subfolder per label);
        one dict per clip: label, seed, mode, files (wav, json, png, and the video for a video query), nearest."""
        queries.check_positive_int("number of candidates", count, MAX_CANDIDATES)
        queries.expand_seeds(seed, None, count)  # a seed out of range is refused before any work
        folder = self._next_folder()
        results: list[dict[str, Any]] = []

        def keep(label: str) -> Callable:
            def keep_output(out, files: list[Path]) -> None:
                stems = list(dict.fromkeys(p.with_suffix("") for p in files))  # one per row, in row order
                for row, stem in enumerate(stems):
                    mine = [p for p in files if p.with_suffix("") == stem] + [stem.with_suffix(".json")]
                    results.append({"label": label, "seed": out.seeds[row], "mode": out.mode, "files": mine,
                                    "nearest": self.nearest(out.condition[row])})
            return keep_output

        try:
            for n, (label, call) in enumerate(calls):
                report = None if progress is None else (lambda done, total, n=n: progress(n * total + done,
                                                                                          len(calls) * total))
                generate_files(self.pipe, query, folder / label, num_samples=count, seed=seed, save_mel=True,
                               progress=report, sidecar=self.sidecar, on_output=keep(label), **call)
        finally:
            for empty in sorted((p for p in (folder, *folder.iterdir()) if p.is_dir() and not any(p.iterdir())),
                                reverse=True):
                empty.rmdir()  # a refused query leaves no folder behind
        return results

    def _next_folder(self) -> Path:
        with self._numbering:
            taken = [int(p.name) for p in self.out.iterdir() if p.is_dir() and p.name.isdigit()]
            folder = self.out / f"{max(taken, default=0) + 1:04d}"
            folder.mkdir()
        return folder

    def nearest(self, condition: np.ndarray) -> list[dict[str, Any]]:
        """The :data:`NEAREST` entries of the pipeline's embedding bank nearest (cosine) to a condition: key,
        label, cosine distance and, when the dataset is at hand, a wav of the training clip."""
        stats = self.pipe.stats
        if stats is None or len(stats.image_bank) == 0:
            return []
        top = bridges.nearest_rows(torch.as_tensor(condition)[None], stats.image_bank, NEAREST)
        rows = []
        for sim, i in zip(top.values[0].tolist(), top.indices[0].tolist(), strict=True):
            key = stats.bank_keys[i]
            rows.append({"key": key, "label": stats.bank_labels[i], "distance": 1.0 - sim,
                         "audio": self._clip_audio(key.rsplit("/", 1)[0])})
        return rows

    def _clip_audio(self, clip_key: str) -> Path | None:
        """A wav of a training clip (its flac, else its mel through the pipeline's vocoder), written once."""
        source = self.clips.get(clip_key)
        if source is None:
            return None
        path = self.out / "training-clips" / f"{safe_name(clip_key)}.wav"
        if not path.is_file():
            if source.ndim == 2:  # a mel [n_mels, F]
                source = self.pipe.vocoder(torch.from_numpy(source)[None].to(self.pipe.vocoder.device))[0].cpu().numpy()
            path.parent.mkdir(exist_ok=True)
            save_audio(path, np.asarray(source, np.float32), self.pipe.sample_rate)
        return path


def training_clips(dataset: str | os.PathLike, pipe) -> dict[str, np.ndarray]:
    """The audio (flac samples, else the log-mel) of the training clips in ``pipe``'s embedding bank, read in one
    pass over the split the bank was drawn from; refuses a dataset of another mel front end or CLIP."""
    if pipe.stats is None:
        raise ClipsonicError("--dataset plays the training clips nearest a result, but this pipeline has no "
                             "embedding bank (stats); re-export it from its run")
    info = read_dataset_info(dataset)
    info.check_compatible(pipe.mel, pipe.clip.dim, pipe.clip.fingerprint, what="the app's pipeline")
    wanted = {key.rsplit("/", 1)[0] for key in pipe.stats.bank_keys}
    split = pipe.stats.info.get("split", "train")
    clips = {}
    for sample in iter_split(info, split, fields=("mel.npy",), optional=("flac",)):
        if sample["__key__"] in wanted:
            clips[sample["__key__"]] = sample.get("flac", sample["mel.npy"])
    if not clips:
        raise ClipsonicError(f"{dataset}: none of the pipeline's {len(wanted)} bank clips is in its {split!r} split; "
                             "give the dataset the pipeline was trained on")
    log.info("%s: %d of the bank's %d training clips at hand", dataset, len(clips), len(wanted))
    return clips


def build_page(studio: Studio):
    """The gradio Blocks of the page (not launched)."""
    import gradio as gr

    defaults, pipe = studio.settings(), studio.pipe
    fixed = defaults["distilled"]  # a distilled pipeline runs only its own sampling settings
    with gr.Blocks(title="clipsonic", analytics_enabled=False) as page:
        gr.Markdown("# clipsonic\nSound for words, pictures and silent videos: a CLIPSonic model (Dong et al., "
                    "WASPAA 2023) trained on videos, queried through CLIP.")
        with gr.Accordion("Model card: what this model knows", open=False):
            gr.Markdown(studio.card(), elem_id="model-card")
        kind = gr.State("text")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                with gr.Tabs():
                    with gr.Tab("Text", id="text") as tab_text:
                        text = gr.Textbox(label="Text", placeholder="what should it sound like?", elem_id="text")
                        if studio.prompts():
                            gr.Examples([[p] for p in studio.prompts()], inputs=[text], label="Prompts it knows")
                    with gr.Tab("Image", id="image") as tab_image:
                        image = gr.Image(label="Picture (upload or paste)", type="filepath",
                                         sources=["upload", "clipboard"], elem_id="image")
                        # Generate reads the upload's path unopened: gradio's own preprocess opens the picture, so
                        # a broken one would fail every Generate (text and video too) with gradio's message, not ours
                        picture = gr.State(None)
                        image.change(_upload_path, image, picture, preprocess=False, queue=False,
                                     show_progress="hidden")
                    with gr.Tab("Video", id="video") as tab_video:
                        video = gr.Video(label="Silent video (the result is this video with sound)",
                                         sources=["upload"], elem_id="video")
                for tab, name in ((tab_text, "text"), (tab_image, "image"), (tab_video, "video")):
                    tab.select(lambda name=name: name, None, kind, queue=False)  # not behind a generation
                negative = gr.Textbox(label="Negative prompt (optional): what to steer away from", elem_id="negative")
                with gr.Accordion("Edit a sound (optional)", open=False):
                    edit_audio = gr.Audio(label="Sound to edit", type="filepath", sources=["upload"],
                                          elem_id="edit-audio")
                    edit_how = gr.Radio(list(EDITS), value=next(iter(EDITS)), label="How", elem_id="edit-how",
                                        info="; ".join(f"{k}: {v}" for k, v in EDITS.items()))
                    strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Strength (vary: 0 keeps the sound, "
                                         "1 makes a new one)", elem_id="strength")
                    with gr.Row():
                        span_start = gr.Number(0, label="Span start (s)", elem_id="span-start")
                        span_end = gr.Number(0, label="Span end (s; 0: to the end)", elem_id="span-end")
                with gr.Accordion("Settings", open=True):
                    mode = gr.Dropdown(["auto", *pipe.modes], value="auto", label="Mode", elem_id="mode",
                                       info="iq: the picture or video; zs, pd, shift, knn: ways to bridge text "
                                            "(auto: the best this model has)")
                    scale = gr.Slider(1.0, 10.0, value=defaults["guidance_scale"], step=0.5, label="Guidance scale",
                                      interactive=not fixed, elem_id="guidance")
                    steps = gr.Slider(1, 200, value=defaults["num_inference_steps"], step=1, label="Steps",
                                      interactive=not fixed, elem_id="steps")
                    sampler = gr.Dropdown(list(SAMPLERS), value=defaults["sampler"], label="Sampler",
                                          interactive=not fixed, elem_id="sampler")
                    seconds = gr.Number(0, label=f"Duration in seconds (0: a training clip, or the video's length; "
                                        f"at most {queries.MAX_SECONDS:g})", elem_id="seconds")
                    long = gr.Dropdown(list(edits.LONG_MODES), value=edits.LONG_MODES[0], elem_id="long",
                                       label="Past the training length", info="windows: overlapping windows averaged "
                                       "at every step; continuation: window after window; single: one long mel")
                    count = gr.Slider(1, MAX_CANDIDATES, value=4, step=1, label="Candidates", elem_id="count")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, label="Seed (candidate i: seed + i)", elem_id="seed")
                        random_seed = gr.Checkbox(True, label="random seed", elem_id="random-seed")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    compare = gr.Button("Compare modes (text)", elem_id="compare")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                slots = []
                for row in range(0, MAX_CANDIDATES, 4):
                    with gr.Row():
                        for i in range(row, row + 4):
                            with gr.Column(visible=False, min_width=160, elem_id=f"candidate-{i}") as box:
                                slots.append((box, gr.Markdown(elem_id=f"candidate-{i}-title"),
                                              gr.Audio(type="filepath", label="Sound", buttons=["download"],
                                                       elem_id=f"candidate-{i}-audio"),
                                              gr.Video(label="Video with sound", visible=False,
                                                       elem_id=f"candidate-{i}-video"),
                                              gr.Image(type="filepath", label="Mel", height=180, elem_id=f"candidate-{i}-mel"),
                                              gr.HTML(elem_id=f"candidate-{i}-nearest")))
                files = gr.File(label="Files (wav, sidecar json, mel png, video)", file_count="multiple",
                                elem_id="files")
        outputs = [status, seed, *(c for slot in slots for c in slot), files]
        shared = {"outputs": outputs, "concurrency_id": "pipeline", "concurrency_limit": 1, "show_progress": "full"}

        tracker = gr.Progress()  # gradio's idiom: a Progress default argument gets the page's progress bar

        def settings_of(g, n, s, sec, lng, *edit) -> dict[str, Any]:
            sec = None if sec in (None, 0) else float(sec)
            length = {"seconds": sec, "long": lng, **edit_settings(sec, *edit)}
            return length if fixed else {"guidance_scale": float(g), "num_inference_steps": int(n), "sampler": s,
                                         **length}

        def on_generate(k, t, im, vid, neg, m, c, sd, rnd, *rest, progress=tracker):
            return _respond(lambda seed: studio.generate(k, t, im, vid, neg, mode=m, count=int(c), seed=seed,
                                                         settings=settings_of(*rest), progress=_bar(progress)),
                            sd, rnd, slots)

        def on_compare(t, neg, sd, rnd, *rest, progress=tracker):
            return _respond(lambda seed: studio.compare(t, neg, seed=seed, settings=settings_of(*rest),
                                                        progress=_bar(progress)), sd, rnd, slots)

        sampling = [scale, steps, sampler, seconds, long, edit_audio, edit_how, strength, span_start, span_end]
        run.click(on_generate, [kind, text, picture, video, negative, mode, count, seed, random_seed, *sampling],
                  **shared)
        compare.click(on_compare, [text, negative, seed, random_seed, *sampling], **shared)
    return page


# The page's ways to edit a sound (CLIPSonicPipeline's audio, strength and mask; clipsonic.pipeline.edits).
EDITS = {"vary": "a variation that follows the query, by strength", "regenerate a span": "the span in seconds is made "
         "anew, the rest kept", "continue": "the sound extended to the duration"}


def edit_settings(seconds: float | None, audio: str | None, how: str, strength: float, start: float | None,
                  end: float | None) -> dict:
    """The pipeline's audio/strength/mask for the page's edit fields (no sound: none)."""
    if audio is None:
        return {}
    if how not in EDITS:
        raise ClipsonicError(f"unknown edit {how!r}; choose one of {list(EDITS)}")
    if how == "vary":
        return {"audio": audio, "strength": float(strength)}
    if how == "continue":  # the pipeline continues a sound shorter than the duration
        if not seconds:
            raise ClipsonicError("continue: set the duration (seconds) to how long the sound should become")
        return {"audio": audio}
    return {"audio": audio, "mask": (float(start or 0), float(end) if end else None)}


def _upload_path(payload: dict[str, Any] | None) -> str | None:
    """The server path of an upload, from its component's raw value (gradio's FileData as a dict)."""
    return None if payload is None else payload.get("path")


def _bar(progress) -> Callable[[int, int], None]:
    return lambda done, total: progress((done, total), desc="sampling", unit="steps")


# The folders of a path in a message (an upload's lies in gradio's cache under the output folder): the page shows the
# file's name only, as a page shared with --share must not tell its visitors where the server keeps things.
_SERVER_FOLDER = re.compile(r"(?<![\w.])/(?:[^\s/:'\"]+/)+")


def _respond(make: Callable[[int], list[dict[str, Any]]], seed, random_seed: bool, slots) -> list[Any]:
    """Run ``make(seed)`` and lay its results into the slots; an expected failure becomes the page's error."""
    import gradio as gr

    if random_seed:
        seed = secrets.randbelow(2**31)
    elif seed is None or float(seed) != int(seed):
        raise gr.Error("Seed: give a whole number, or tick 'random seed'", print_exception=False)
    try:
        results = make(int(seed))
    except (ClipsonicError, OSError, ValueError) as exc:
        log.info("refused: %s", one_line(exc))
        raise gr.Error(_SERVER_FOLDER.sub("", one_line(exc)), print_exception=False) from None
    folder = os.path.commonpath([r["files"][0].parent for r in results])  # Compare: the folder above the modes'
    updates: list[Any] = [f"{len(results)} clip(s), seed {seed}: saved in `{folder}`", seed]
    for slot, result in itertools.zip_longest(slots, results[:len(slots)]):
        box, title, audio, video, mel, nearest = slot
        if result is None:
            updates += [gr.Column(visible=False), "", None, gr.Video(value=None, visible=False), None, ""]
            continue
        by_suffix = {p.suffix: p for p in result["files"]}
        moving = next((str(p) for p in result["files"] if p.suffix not in (".wav", ".json", ".png")), None)
        name = f"mode {result['label']}" if result["label"] else f"mode {result['mode']}"
        updates += [gr.Column(visible=True), f"**{name}** · seed `{result['seed']}`", str(by_suffix[".wav"]),
                    gr.Video(value=moving, visible=moving is not None), str(by_suffix[".png"]),
                    _nearest_html(result["nearest"])]
    return updates + [[str(p) for r in results for p in r["files"]]]


def _nearest_html(rows: list[dict[str, Any]]) -> str:
    """'Where it came from': the training clips nearest a result, a player for those at hand."""
    if not rows:
        return "<p>no embedding bank in this pipeline: nothing to compare with</p>"
    cells = []
    for r in rows:
        play = (f'<audio controls preload="none" src="/gradio_api/file={urllib.parse.quote(str(r["audio"]))}">'
                "</audio>" if r["audio"] else "")
        cells.append(f"<tr><td>{html.escape(str(r['label'] or '—'))}</td><td><code>{html.escape(r['key'])}</code>"
                     f"</td><td>{r['distance']:.3f}</td><td>{play}</td></tr>")
    return ("<details class='nearest'><summary>Where it came from: nearest training clips</summary><table>"
            "<tr><th>label</th><th>clip/frame</th><th>cosine distance</th><th></th></tr>" + "".join(cells)
            + "</table></details>")


def serve(studio: Studio, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          max_upload_mb: float = 200, block: bool = True):
    """Serve the page (until interrupted, when ``block``; else return the running gradio Blocks): one generation at
    a time, uploads over ``max_upload_mb`` refused, files served only from the output folder (and gradio's upload
    cache, which the CLI puts inside it)."""
    page = build_page(studio)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=share, max_file_size=int(max_upload_mb * 2**20),
                allowed_paths=[str(studio.out.resolve())], ssr_mode=False, mcp_server=False, quiet=True,
                prevent_thread_lock=True, show_error=True)
    print(f"clipsonic app: {page.local_url}" + (f" (public: {page.share_url})" if share else "")
          + " — Ctrl-C stops it", flush=True)
    if block:
        page.block_thread()
    return page
