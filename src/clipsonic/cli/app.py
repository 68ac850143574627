"""``clipsonic app``: the local web page (clipsonic.app) on a pipeline; gradio is the optional ``app`` extra."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from clipsonic.app import Studio, serve
from clipsonic.cli import options
from clipsonic.cli.options import command, device
from clipsonic.errors import ClipsonicError
from clipsonic.files import lock_folder
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.pipeline.outputs import check_writable, model_sidecar
from clipsonic.pipeline.paths import BUILTIN_DIR


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "app", run_app, "a local web page: sound for text, pictures and silent videos",
        "Serve a page on this machine (http://127.0.0.1:7860 by default; not reachable from elsewhere unless --host "
        "says so, no public link unless --share). Type text, drop or paste a picture, or upload a silent video; hear "
        "the candidates side by side with their mels and seeds, compare the text modes, see the training clips each "
        "result landed nearest, and download the clips with their sidecars (clipsonic generate --from NAME.json makes "
        "one again). Every result is written to a numbered folder of --out. Generations run one at a time; other "
        "presses wait in a queue. Needs gradio: pip install 'clipsonic[app]' (make setup installs it).",
        "clipsonic app   # the built-in model, on http://127.0.0.1:7860",
        "clipsonic app --model pipelines/vgg --dataset data/vgg --out app-results",
        "clipsonic app --host 0.0.0.0 --port 8080   # reachable from the local network")
    p.add_argument("--model", type=options.model, metavar="DIR",
                   help="pipeline directory, or builtin:NAME (default: the built-in model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs the internet)")
    p.add_argument("--out", type=Path, default=Path("generated/app"),
                   help="folder for the results and uploads (default generated/app)")
    p.add_argument("--dataset", type=Path, metavar="DATA",
                   help="the pipeline's training dataset (clipsonic preprocess), to play the nearest training clips")
    p.add_argument("--max-upload-mb", type=float, default=200, help="largest upload accepted (default 200 MB)")
    p.add_argument("--device", type=device, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--clip-model", help="load the pipeline's CLIP from here (same weights, e.g. a local copy)")


def run_app(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("gradio") is None:
        raise ClipsonicError("clipsonic app needs gradio: pip install 'clipsonic[app]' (make setup installs it)")
    if not 0 < args.port < 65536:
        raise ClipsonicError(f"--port {args.port}: give a port in 1..65535")
    if not args.max_upload_mb > 0:
        raise ClipsonicError(f"--max-upload-mb {args.max_upload_mb:g}: give a positive size")
    check_writable(args.out)
    with lock_folder(args.out, "clipsonic app") as out:
        # gradio keeps uploads and served copies in GRADIO_TEMP_DIR, read when it is imported (build_page): inside --out
        os.environ.setdefault("GRADIO_TEMP_DIR", str((out / "uploads").resolve()))
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        pipe = CLIPSonicPipeline.from_pretrained(args.model, device=args.device, clip_model=args.clip_model)
        studio = Studio(pipe, out, model_sidecar(pipe, args.model, clip_model=args.clip_model),
                        model_dir=args.model or BUILTIN_DIR, dataset=args.dataset)
        serve(studio, host=args.host, port=args.port, share=args.share, max_upload_mb=args.max_upload_mb)
