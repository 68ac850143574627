"""``clipsonic preprocess``: videos → dataset directory; ``clipsonic preprocess merge``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clipsonic.cli import examples
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)

CLIP_RULE = """clip rule: clips of --clip-seconds (default 4.096 s = 128 mel frames) start at the video's
(or VGGSound row's) start and every --stride seconds while they fit; a shorter tail is dropped,
except that a video shorter than one clip but at least --min-clip-fraction of it gives one
zero-padded clip. Clips quieter than --silence-db dBFS RMS are dropped as silent. K frames are
taken at the centres of K equal parts of each clip; the middle one is also stored as a jpg."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="turn videos into training shards (log-mels + CLIP frame embeddings)",
        description="Cut videos into clips and store each clip's log-mel and the CLIP image embeddings "
                    "of K of its frames as WebDataset shards. Re-running the same command resumes.\n\n" + CLIP_RULE,
        epilog=examples(
            "clipsonic preprocess videos/ --out data/mine --test-fraction 0.05",
            "clipsonic preprocess vggsound.csv --video-dir vggsound/ --out data/vgg --workers 8 --keep-audio",
            "clipsonic preprocess MUSIC_solo_videos.json --video-dir music/ --out data/music --max-clips-per-video 50",
            "clipsonic preprocess videos/ --out data/x --clip-model ~/models/clip-vit-large-patch14",
            "clipsonic preprocess videos/ --out data/x --num-shards 4 --shard-index 0   # then: preprocess merge data/x",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="a video folder, a VGGSound CSV, the MUSIC JSON, a manifest .csv/.jsonl "
                                  "(path[,start][,duration][,label][,split]) — or 'merge'")
    p.add_argument("out", nargs="?", type=Path, help=argparse.SUPPRESS)  # `preprocess merge DIR`
    p.add_argument("--out", dest="out_flag", type=Path, help="output dataset directory")
    p.add_argument("--video-dir", type=Path, help="folder of downloaded videos (VGGSound CSV / MUSIC JSON)")
    p.add_argument("--clip-model", default="openai/clip-vit-large-patch14", help="CLIP hub id or local directory")
    p.add_argument("--frames-per-clip", type=int, default=3, help="K frames embedded per clip (default 3)")
    p.add_argument("--clip-seconds", type=float, default=None,
                   help="clip length, rounded down to a multiple of 8 mel frames (default 4.096)")
    p.add_argument("--stride", type=float, default=None, help="seconds between clip starts (default: clip length)")
    p.add_argument("--max-clips-per-video", type=int, default=None, help="cap on clips per video")
    p.add_argument("--min-clip-fraction", type=float, default=0.5, help="shortest usable video, as a fraction of a clip")
    p.add_argument("--silence-db", type=float, default=-60.0, help="drop clips quieter than this RMS (dBFS)")
    p.add_argument("--keep-audio", action="store_true", help="store each clip's audio as flac (vocoder training, FAD)")
    p.add_argument("--test-fraction", type=float, default=0.0, help="hash split for sources without splits")
    p.add_argument("--shard-size-mb", type=float, default=256.0, help="target shard size")
    p.add_argument("--group-size", type=int, default=32,
                   help="videos per CLIP group; shards close and progress is committed at group boundaries")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0: decode in this process)")
    p.add_argument("--device", default=None, help="device for CLIP (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per CLIP batch")
    p.add_argument("--num-shards", type=int, default=None, help="split the input list into N parts (default: launcher's world size)")
    p.add_argument("--shard-index", type=int, default=None, help="which part this process handles (default: launcher's rank)")
    p.set_defaults(func=run_preprocess)


def _options(args):
    from clipsonic.audio import MelConfig
    from clipsonic.data.clips import ClipOptions
    from clipsonic.data.preprocess import PreprocessOptions

    mel = MelConfig()
    if args.clip_seconds is not None:
        step = 8 * mel.hop_length
        samples = int(args.clip_seconds * mel.sample_rate) // step * step
        if samples < step:
            raise ClipsonicError(f"--clip-seconds {args.clip_seconds} is shorter than 8 mel frames ({step / mel.sample_rate:.3f} s)")
        mel = mel.replace(clip_samples=samples)
    clips = ClipOptions(frames_per_clip=args.frames_per_clip, stride_seconds=args.stride,
                        max_clips_per_video=args.max_clips_per_video, min_clip_fraction=args.min_clip_fraction,
                        silence_db=args.silence_db, keep_audio=args.keep_audio)
    return mel, PreprocessOptions(clip_model=args.clip_model, clips=clips, test_fraction=args.test_fraction,
                                  shard_size_mb=args.shard_size_mb, encode_group=args.group_size)


def run_preprocess(args) -> None:
    from tqdm import tqdm

    from clipsonic.data.preprocess import merge_parts, preprocess

    out = args.out_flag or args.out
    if out is None:
        raise ClipsonicError("--out DIR is required")
    if args.source == "merge":
        info = merge_parts(out)
        _summary(info)
        return
    mel, options = _options(args)
    bar = tqdm(unit="video", dynamic_ncols=True, file=sys.stderr)

    def progress(stats) -> None:
        bar.total = stats.items_total
        bar.n = stats.items_done
        bar.set_postfix(clips=stats.clips, rejected=stats.rejected, refresh=False)
        bar.refresh()

    try:
        info = preprocess(args.source, out, options=options, mel=mel, video_dir=args.video_dir,
                          workers=args.workers, device=args.device, num_shards=args.num_shards,
                          shard_index=args.shard_index, clip_batch_size=args.batch_size, progress=progress)
    finally:
        bar.close()
    _summary(info)


def _summary(info) -> None:
    c = info.counts
    splits = ", ".join(f"{s}: {info.num_clips(s)} clips in {len(v['shards'])} shard(s)" for s, v in info.splits.items())
    print(f"{info.root}: {c.get('inputs', 0)} inputs → {c.get('clips', 0)} clips ({splits}); "
          f"{c.get('rejected', 0)} rejected (see rejected.jsonl), {c.get('silent_clips', 0)} silent clips dropped")
