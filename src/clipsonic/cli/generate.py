"""``clipsonic generate --model DIR (--text T | --image F | --video V | --prompts FILE) [-o OUT]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clipsonic.bridges import MODES
from clipsonic.cli import examples

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from clipsonic.pipeline.queries import DEFAULT_VIDEO_FRAMES, MAX_SECONDS, VIDEO_POOLING

    p = sub.add_parser(
        "generate",
        help="generate audio from text, an image or a video",
        description="Generate sound with a pipeline directory. Modes: iq (image/video query; default for them), "
                    "zs (CLIP text embedding as is), pd (through the diffusion prior; default for text when the "
                    "pipeline has one), shift (mean-embedding shift) and knn (nearest training images). "
                    "-o takes a .wav/.flac (one clip), a video file name (video query: a copy of the video with the "
                    "new sound, its picture stream copied) or a directory (NNN-<query>.wav per clip). "
                    f"--seconds rounds to a multiple of 8 mel frames (0.256 s) and is at most {MAX_SECONDS:g}; "
                    "clips longer than the training length work (the UNet is convolutional in time) but drift "
                    "from what it learned. Without a vocoder component the audio is made with Griffin-Lim.",
        epilog=examples(
            "clipsonic generate --text 'the red ball that is humming' -o hum.wav   # the built-in model",
            "clipsonic generate --list-builtin-prompts",
            "clipsonic generate --model pipelines/vgg --text 'a dog barking' -o dog.wav",
            "clipsonic generate --model pipelines/vgg --text 'rain on a roof' --mode zs --guidance 3 --seed 1",
            "clipsonic generate --model pipelines/vgg --image cat.jpg --num-samples 4 -o cats/",
            "clipsonic generate --model pipelines/vgg --video silent.mp4 -o with_sound.mp4",
            "clipsonic generate --model pipelines/vgg --prompts prompts.txt -o out/ --save-mel --steps 100",
            "clipsonic generate --model pipelines/vgg --text 'violin' --negative 'noise' --sampler ddpm --steps 1000",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, metavar="DIR",
                   help="pipeline directory (default: the built-in SonicWorld model; see --list-builtin-prompts)")
    p.add_argument("--list-builtin-prompts", action="store_true",
                   help="print text queries the built-in model knows, and exit")
    q = p.add_argument_group("query (exactly one kind)")
    q.add_argument("--text", action="append", help="text query (repeatable)")
    q.add_argument("--image", action="append", type=Path, help="image file (repeatable)")
    q.add_argument("--video", action="append", type=Path, help="video file (repeatable)")
    q.add_argument("--prompts", type=Path, metavar="FILE", help="text file, one query per line ('#' comments)")
    s = p.add_argument_group("sampling")
    s.add_argument("--mode", choices=MODES, help="how the query conditions the model (see above)")
    s.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance scale w (default 1.5)")
    s.add_argument("--steps", type=int, default=None, help="sampling steps (default 50)")
    s.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp-2m"], default="ddim", help="sampler (default ddim)")
    s.add_argument("--seed", type=int, default=None, help="seed of output 0; output i uses seed + i")
    s.add_argument("--num-samples", type=int, default=1, help="clips per query (default 1)")
    s.add_argument("--seconds", type=float, default=None, help="length (default: one training clip; a video's own)")
    s.add_argument("--negative", metavar="TEXT", help="text to steer away from (replaces the null condition)")
    s.add_argument("--video-frames", choices=VIDEO_POOLING, default="mean",
                   help="video: mean of --num-frames frames, or the first/middle frame (default mean)")
    s.add_argument("--num-frames", type=int, default=DEFAULT_VIDEO_FRAMES, help="frames averaged per video (default 8)")
    s.add_argument("--batch-size", type=int, default=8, help="prompts per batch with --prompts (default 8)")
    r = p.add_argument_group("run")
    r.add_argument("-o", "--out", type=Path, default=Path("generated"), help="output file or directory (default generated/)")
    r.add_argument("--save-mel", action="store_true", help="also write each mel as a PNG")
    r.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    r.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="autocast dtype of the UNet (GPU)")
    r.add_argument("--vocoder", help="vocoder directory, or 'griffin-lim', instead of the pipeline's")
    r.add_argument("--clip-model", help="load the pipeline's CLIP from here (same weights, e.g. a local copy)")
    p.set_defaults(func=run_generate)


def _read_prompts(path: Path) -> list[str]:
    from clipsonic.pipeline.queries import QueryError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryError(f"{path}: cannot read the prompt file ({exc})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise QueryError(f"{path}: no prompts (one per line; blank lines and '#' lines are skipped)")
    return prompts


class _LazyBar:
    """A tqdm bar over sampling steps, created at the first step (so early errors print no bar)."""

    def __init__(self, desc: str | None) -> None:
        self.desc, self.bar = desc, None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_generate(args: argparse.Namespace) -> int:
    from clipsonic.pipeline import DEFAULT_STEPS, CLIPSonicPipeline
    from clipsonic.pipeline.outputs import check_target, save_generation
    from clipsonic.pipeline.queries import QueryError, parse_query

    if args.list_builtin_prompts:
        from clipsonic.builtin import builtin_prompts

        print("\n".join(builtin_prompts()))
        return 0
    if args.prompts is not None and args.text:
        raise QueryError("give --text or --prompts, not both")
    if args.batch_size < 1:
        raise QueryError(f"--batch-size must be >= 1, got {args.batch_size}")
    texts = _read_prompts(args.prompts) if args.prompts is not None else args.text
    query = parse_query(texts, args.image, args.video)  # no query / two kinds: refused before loading anything
    check_target(args.out, len(query) * args.num_samples, query.kind)
    pipe = CLIPSonicPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                             clip_model=args.clip_model, vocoder=args.vocoder)
    if pipe.vocoder_is_fallback and args.model is not None:  # the built-in model chose Griffin-Lim (its card says why)
        print(f"note: {args.model} has no vocoder; using Griffin-Lim (lower quality; see clipsonic train-vocoder)",
              file=sys.stderr)
    per_call = args.batch_size if query.kind == "text" else 1
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    written = []
    for start in range(0, len(query), per_call):
        items = query.items[start:start + per_call]
        rows = len(items) * args.num_samples
        seeds = None if args.seed is None else [args.seed + start * args.num_samples + i for i in range(rows)]
        # the bar appears with the first sampling step, after the query files were read and checked
        bar = _LazyBar(f"{start + 1}-{start + len(items)}/{len(query)}" if len(query) > 1 else None)
        try:
            out = pipe(**{query.kind: items}, mode=args.mode, guidance_scale=args.guidance, num_inference_steps=steps,
                       sampler=args.sampler, seed=seeds, num_samples=args.num_samples, seconds=args.seconds,
                       negative_text=args.negative, video_frames=args.video_frames, num_frames=args.num_frames,
                       progress=bar.update)
        finally:
            bar.close()
        videos = [items[i // args.num_samples] for i in range(rows)] if query.kind == "video" else None
        written += save_generation(out, args.out, videos=videos, save_mel=args.save_mel,
                                   first_index=start * args.num_samples)
    for path in written:
        print(path)
    log.info("mode %s, guidance %g, %s %d steps", out.mode, args.guidance, args.sampler, steps)
    return 0
