"""``clipsonic preprocess SOURCE --out DATA``: videos → dataset directory; ``--merge DATA`` joins its parts."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsonic.audio import MelConfig
from clipsonic.cli import options
from clipsonic.data.clips import ClipOptions
from clipsonic.data.preprocess import PreprocessOptions, merge_parts, preprocess
from clipsonic.errors import ClipsonicError

CLIP_RULE = """clip rule: clips of --clip-seconds (default 4.096 s = 128 mel frames) start at the video's
(or VGGSound row's) start and every --stride-seconds while they fit; a shorter tail is dropped,
except that a video shorter than one clip but at least --min-clip-fraction of it gives one
zero-padded clip. Clips quieter than --silence-db dBFS RMS are dropped as silent. K frames are
taken at the centres of K equal parts of each clip; the middle one is also stored as a jpg."""


def register(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "preprocess", run_preprocess, "turn videos into training shards (log-mels + CLIP frame embeddings)",
        "Cut videos into clips and store each clip's log-mel and the CLIP image embeddings of K of its frames as "
        "WebDataset shards. Re-running the same command resumes.\n\n" + CLIP_RULE,
        "clipsonic preprocess videos/ --out data/mine --test-fraction 0.05",
        "clipsonic preprocess vggsound.csv --video-dir vggsound/ --out data/vgg --workers 8 --keep-audio",
        "clipsonic preprocess MUSIC_solo_videos.json --video-dir music/ --out data/music --max-clips-per-video 50",
        "clipsonic preprocess videos/ --out data/x --clip-model ~/models/clip-vit-large-patch14",
        "clipsonic preprocess videos/ --out data/x --num-shards 4 --shard-index 0   # then: --merge data/x",
        "clipsonic preprocess --merge data/x")
    p.add_argument("source", nargs="?", help="a video folder, a VGGSound CSV, the MUSIC JSON, a manifest .csv/.jsonl "
                                             "(path[,start][,duration][,label][,split])")
    p.add_argument("--out", type=Path, help="output dataset directory")
    p.add_argument("--merge", type=Path, metavar="DATA", help="merge the parts a --num-shards run wrote into DATA")
    p.add_argument("--video-dir", type=Path, help="folder of downloaded videos (VGGSound CSV / MUSIC JSON)")
    p.add_argument("--clip-seconds", type=float, help="clip length, rounded down to a multiple of 8 mel frames "
                                                      f"(default {MelConfig().clip_seconds:g})")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0: decode in this process; default 2)")
    p.add_argument("--device", help="device for CLIP (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per CLIP batch (default 64)")
    p.add_argument("--num-shards", type=int, help="split the input list into N parts (default: launcher's world size)")
    p.add_argument("--shard-index", type=int, help="which part this process handles (default: launcher's rank)")
    options.add_config_flags(p, PreprocessOptions, "options", title="dataset options (stored in dataset.json)")
    options.add_config_flags(p, ClipOptions, "options.clips", title="clip options (stored in dataset.json)")
    options.deprecated_alias(p, "--stride", "--stride-seconds", type=float, dest="options.clips.stride_seconds")
    options.deprecated_alias(p, "--group-size", "--encode-group", type=int, dest="options.encode_group")


def run_preprocess(args: argparse.Namespace) -> None:
    if args.merge is not None:
        return _summary(merge_parts(args.merge))
    if args.source is None or args.out is None:
        raise ClipsonicError("give SOURCE and --out DIR (or --merge DIR)")
    mel = MelConfig() if args.clip_seconds is None else MelConfig().with_clip_seconds(args.clip_seconds)
    settings = PreprocessOptions.from_dict(options.overrides(args).get("options", {}), source="flags")
    with options.progress_bar("video", keys=("clips", "rejected")) as bar:
        info = preprocess(args.source, args.out, options=settings, mel=mel, video_dir=args.video_dir,
                          workers=args.workers, device=args.device, num_shards=args.num_shards,
                          shard_index=args.shard_index, clip_batch_size=args.batch_size,
                          progress=lambda p: bar(p.items_done, p.items_total, vars(p)))
    _summary(info)


def _summary(info) -> None:
    c = info.counts
    splits = ", ".join(f"{s}: {info.num_clips(s)} clips in {len(v['shards'])} shard(s)" for s, v in info.splits.items())
    print(f"{info.root}: {c.get('inputs', 0)} inputs → {c.get('clips', 0)} clips ({splits}); "
          f"{c.get('rejected', 0)} rejected (listed in dataset.json), {c.get('silent_clips', 0)} silent clips dropped")
