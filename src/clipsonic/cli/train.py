"""Making data and models: ``preprocess`` (videos → dataset), the trainers (``train``, ``train-prior``,
``train-vocoder``: ``clipsonic train* DATA --out RUN [--config FILE] [--resume] [flags]``, flags over
``--config``'s sections), and what is done with a run: ``export``, ``attach``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipsonic.audio import MelConfig
from clipsonic.cli import options
from clipsonic.data.clips import ClipOptions
from clipsonic.data.preprocess import PreprocessOptions, merge_parts, preprocess
from clipsonic.diffusion import DiffusionConfig
from clipsonic.errors import ClipsonicError
from clipsonic.export import attach_clip
from clipsonic.models import MelUNetConfig
from clipsonic.prior import attach_prior, train_prior
from clipsonic.prior.train import PriorTrainConfig
from clipsonic.train import TrainConfig, export_run, read_run, train
from clipsonic.train.stop import TrainingStopped
from clipsonic.vocoder import DiscriminatorConfig, VocoderTrainConfig, attach_vocoder, train_vocoder


def register(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "preprocess", run_preprocess, "turn videos into training shards (log-mels + CLIP frame embeddings)",
        "Cut videos into clips and store each clip's log-mel and the CLIP image embeddings of K of its frames as "
        "WebDataset shards. Re-running the same command resumes.\n\nclip rule: clips of --clip-seconds (default "
        "4.096 s = 128 mel frames) start at the video's (or VGGSound row's) start and every --stride-seconds while "
        "they fit; the next start (the only one of a video shorter than a clip) gives one zero-padded clip when at "
        "least --min-clip-fraction of a clip of audio follows it, else that tail is dropped (counted in the summary). "
        "Clips quieter than --silence-db dBFS RMS are dropped as silent. K frames are taken at the centres of K equal "
        "parts of each clip; the middle one is also stored as a jpg. --frame-rate R also stores the embeddings of N = "
        "round(clip seconds × R) frames at the centres of N equal parts of each clip (seq.npy), aligned to the mel: "
        "of its F mel frames, frame i covers [i·F/N, (i+1)·F/N); a video with fewer than N frames per clip is "
        "rejected.\n\nfolder layouts: videos directly in the "
        "folder are unlabeled (split by --test-fraction); class folders (FOLDER/dog/…) give labels; split folders "
        "FOLDER/train, test, val (valid, validation) give the splits, each holding either layout (no "
        "--test-fraction then). Mixed layouts are refused.",
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
    p.add_argument("--device", type=options.device, help="device for CLIP (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per CLIP batch (default 64)")
    p.add_argument("--num-shards", type=int, help="split the input list into N parts (default: launcher's world size)")
    p.add_argument("--shard-index", type=int, help="which part this process handles (default: launcher's rank)")
    options.add_config_flags(p, PreprocessOptions, "options", title="dataset options (stored in dataset.json)")
    options.add_config_flags(p, ClipOptions, "options.clips", title="clip options (stored in dataset.json)")
    options.deprecated_alias(p, "--stride", "--stride-seconds", type=float, dest="options.clips.stride_seconds")
    options.deprecated_alias(p, "--group-size", "--encode-group", type=int, dest="options.encode_group")

    p = _trainer(
        sub, "train", train, "train the mel diffusion model on a preprocessed dataset",
        "Train the CLIP-conditioned mel diffusion model (Improved DDPM) on a dataset directory made by `clipsonic "
        "preprocess`, on CPU, one GPU, or many (`accelerate launch`). Checkpoints, metrics.jsonl, TensorBoard logs "
        "and samples go to RUN_DIR; at the end the EMA weights are exported as a pipeline directory "
        "(RUN_DIR/pipeline; any checkpoint later with `clipsonic export`). Network settings other than --preset and --seq-cond "
        "go in the \"unet\" section of --config.\n\nSeveral processes on a machine without GPUs: `accelerate launch "
        "--multi_gpu --num_processes N` or torchrun (accelerate's --cpu flag alone starts a single process).",
        "clipsonic train data/music --out runs/music                      # the paper's settings (GPU)",
        "clipsonic train data/mine --out runs/cpu --preset cpu            # minutes on a CPU (clips of 1.024 s)",
        "clipsonic train data/mine --out runs/cpu --preset cpu --max-steps 6000 --batch-size 32   # flags win",
        "clipsonic train data/music --out runs/music --resume              # continue from the last checkpoint",
        "clipsonic train data/music --out runs/music --max-time 12h 2> train.log   # then --resume for the next 12 h",
        "clipsonic train data/music --out runs/b --config runs/music/config.json   # reproduce a run",
        "accelerate launch --num_processes 2 -m clipsonic train data/vgg --out runs/vgg --precision bf16")
    options.add_config_flags(p, TrainConfig, "train")
    options.add_config_flags(p, DiffusionConfig, "diffusion", only=("prediction",))
    options.add_config_flags(p, MelUNetConfig, "unet", only=("seq_cond",))
    options.deprecated_alias(p, "--no-export", "--no-export-at-end", nargs=0, const=False, dest="train.export_at_end")

    p = _trainer(
        sub, "train-prior", train_prior, "train a diffusion prior (CLIP text embedding → image embedding) for the PD mode",
        "Train our diffusion prior (DALL-E 2 style, conditioned on the pooled CLIP text embedding) on image–caption "
        "pairs: a preprocessed dataset (the labels of its train split become captions through --templates; its "
        "test clips are never read), a CSV or JSONL with image and caption columns (image/path/file, caption/text), "
        "a COCO captions JSON (images beside it), or a folder of images with NAME.txt captions; paths in a file are "
        "relative to its folder. Checkpoints, metrics.jsonl and TensorBoard logs go "
        "to RUN_DIR; the finished prior to RUN_DIR/prior (attach it with `clipsonic attach prior`). Validation "
        "reports how close (cosine) the prior's samples and the raw text embeddings are to the held-out image "
        "embeddings.",
        "clipsonic train-prior data/vgg --out runs/prior-vgg",
        "clipsonic train-prior data/mine --out runs/prior --preset tiny --max-steps 2000 --cpu",
        "clipsonic train-prior captions.csv --out runs/prior --clip-model openai/clip-vit-large-patch14",
        "clipsonic train-prior coco/train2017/captions_train2017.json --out runs/prior --clip-model ~/models/clip",
        "clipsonic train-prior data/vgg --out runs/prior-vgg --resume --max-steps 40000",
        "accelerate launch --num_processes 2 -m clipsonic train-prior data/vgg --out runs/prior-vgg")
    p.add_argument("--clip-model", help="CLIP to embed images/captions with (required for image collections; "
                                        "default for a dataset: the one it was built with)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    options.add_config_flags(p, PriorTrainConfig, "train")
    options.deprecated_alias(p, "--template", "--templates", type=lambda t: (t,), dest="train.templates")

    p = _trainer(
        sub, "train-vocoder", train_vocoder, "train a BigVGAN vocoder on the paper's 16 kHz / 64-band mels",
        "Train BigVGAN (generator + discriminators and losses) on a dataset directory built with `preprocess "
        "--keep-audio`, or on a folder of audio files (wav/flac/mp3/ogg). Writes RUN_DIR/checkpoints/, TensorBoard "
        "logs and, at the end, RUN_DIR/vocoder/ — the inference directory that `vocode --vocoder` and `attach "
        "vocoder` take (RUN_DIR works too). The presets (paper, base, tiny) set the network and the training "
        "defaults; the flags override them. Multi-GPU: `accelerate launch -m clipsonic train-vocoder …`.",
        "clipsonic train-vocoder data/vgg --out runs/vocoder --preset base --batch-size 32",
        "clipsonic train-vocoder ~/sounds --out runs/voc-tiny --preset tiny --max-steps 2000",
        "clipsonic train-vocoder data/vgg --out runs/vocoder --resume        # after a crash or kill")
    options.add_config_flags(p, VocoderTrainConfig, "train")
    options.add_config_flags(p, DiscriminatorConfig, "discriminator", only=("kind",), prefix="discriminator-")
    options.deprecated_alias(p, "--discriminator", "--discriminator-kind", dest="discriminator.kind")

    p = options.command(
        sub, "export", run_export, "export a run's checkpoint: UNet → pipeline, prior → prior/, vocoder → vocoder/",
        "Write the inference directory of any training run (its task is in RUN_DIR/config.json) from a checkpoint, "
        "e.g. of a stopped run: a UNet run becomes a pipeline directory (default RUN_DIR/pipeline) with a copy of "
        "its CLIP in clip/ when this machine has that CLIP (a folder, or a hub id in the Hugging Face cache; never "
        "downloaded), a prior run RUN_DIR/prior, a vocoder run RUN_DIR/vocoder.",
        "clipsonic export runs/music --out pipelines/music --step 200000", "clipsonic export runs/vocoder",
        "clipsonic export runs/mine --no-bundle-clip     # the pipeline names the CLIP instead of holding it")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a train, train-prior or train-vocoder run directory")
    p.add_argument("-o", "--out", type=Path, help="where to write (default: inside RUN_DIR)")
    p.add_argument("--step", type=int, help="the checkpoint to export (default: the newest readable one)")
    p.add_argument("--data", type=Path, help="(UNet runs) the dataset for the pipeline's statistics (default: the run's)")
    p.add_argument("--bundle-clip", action=argparse.BooleanOptionalAction,
                   help="(UNet runs) copy the CLIP into PIPELINE/clip so the folder loads offline anywhere; "
                        "--no-bundle-clip: only name it (default: the run's train.bundle_clip, true unless set)")
    options.deprecated_alias(p, "--output", "--out", type=Path, dest="out")
    options.deprecated_alias(p, "--checkpoint", "--step", type=lambda path: int(Path(path).name.rsplit("-", 1)[-1]), dest="step")

    p = options.command(
        sub, "attach", run_attach, "put a prior, a vocoder or a CLIP into a pipeline directory",
        "Copy a component into PIPELINE/<component>/ atomically, once it loads and fits the pipeline: a prior of its "
        "CLIP (a train-prior run, another pipeline, or a diffusers PriorTransformer such as Karlo's), a vocoder of its "
        "mels, or the CLIP it was trained with (so it loads offline anywhere).",
        "clipsonic attach prior runs/music/pipeline runs/prior-music",
        "clipsonic attach prior runs/vgg/pipeline ~/models/karlo-v1-alpha --clip-model openai/clip-vit-large-patch14",
        "clipsonic attach vocoder runs/music/pipeline runs/vocoder",
        "clipsonic attach clip runs/music/pipeline ~/models/clip-vit-large-patch14")
    p.add_argument("component", choices=list(ATTACH), help="what to attach")
    p.add_argument("pipeline", type=Path, metavar="PIPELINE", help="pipeline directory")
    p.add_argument("source", type=Path, metavar="SOURCE", help="the component's directory or training run")
    p.add_argument("--clip-model", help="(prior) the CLIP a raw diffusers prior was trained with, as the pipeline "
                                        "names it (default openai/clip-vit-large-patch14)")


STOPPING = ("\n\nStopping: Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and the export, "
            "and exits 130/143 naming them (Ctrl-C again aborts at once); --max-time stops the same way at a time "
            "budget and exits 0. --resume continues either. With stderr not a terminal (a log file), progress is a "
            "log line every --progress-every seconds.")


def _trainer(sub: argparse._SubParsersAction, name: str, api, help: str, description: str,
             *examples: str) -> argparse.ArgumentParser:
    p = options.command(sub, name, run_trainer, help, description + STOPPING, *examples)
    p.set_defaults(api=api)
    p.add_argument("data", type=Path, metavar="DATA", help="dataset directory (from `clipsonic preprocess`) "
                                                           "or the source the trainer takes (see above)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--config", type=Path, metavar="FILE", help="JSON config sections, e.g. a run's config.json or "
                                                               "{\"train\": {…}}; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest readable "
                                                         "checkpoint (only the flags given may change, and only "
                                                         "resumable ones)")
    p.add_argument("--restart", action="store_true", help="start a new run in --out even if it holds one: DELETES "
                                                          "that run's config.json, checkpoints, metrics.jsonl, "
                                                          "TensorBoard logs, samples (and a prior's embedded pairs); "
                                                          "its exported folder stays until the new run replaces it")
    return p


def run_preprocess(args: argparse.Namespace) -> None:
    if args.merge is not None:
        if args.source is not None or args.out is not None:
            raise ClipsonicError("--merge DIR takes no SOURCE or --out (it merges the parts inside DIR)")
        return _summary(merge_parts(args.merge))
    if args.source is None or args.out is None:
        raise ClipsonicError("give SOURCE and --out DIR (or --merge DIR)")
    for flag, value, low in (("--workers", args.workers, 0), ("--batch-size", args.batch_size, 1),
                             ("--num-shards", args.num_shards, 1), ("--shard-index", args.shard_index, 0)):
        if value is not None and value < low:
            raise ClipsonicError(f"{flag} must be >= {low}, got {value}")
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
          f"{c.get('rejected', 0)} rejected (listed in dataset.json), {c.get('silent_clips', 0)} silent clips dropped, "
          f"{c.get('padded_clips', 0)} last clips zero-padded, {c.get('dropped_tails', 0)} short tails dropped")


def run_trainer(args: argparse.Namespace) -> int:
    extra = {"clip_model": args.clip_model, "cpu": args.cpu} if args.command == "train-prior" else {}
    try:
        with options.progress_bar(keys=("loss", "mel_l1", "val_mel_l1", "samples_per_s")) as bar:
            # without a terminal (a log file) the loop logs a progress line every train.progress_every seconds
            run = args.api(args.data, args.out, options.overrides(args, args.config), resume=args.resume,
                           restart=args.restart, progress=bar if sys.stderr.isatty() else None, **extra)
    except TrainingStopped as stop:  # SIGINT/SIGTERM: the checkpoint (and export) are written
        if options.main_process():
            print(f"clipsonic {args.command}: {stop}", file=sys.stderr)
        return 128 + stop.signum
    if options.main_process():
        print(f"run: {run}", *(f"{name}: {run / name}" for name in ("pipeline", "prior", "vocoder")
                               if (run / name).is_dir()), sep="\n")
    return 0


def run_export(args: argparse.Namespace) -> None:
    bundle = {} if args.bundle_clip is None else {"bundle_clip": args.bundle_clip}
    if bundle and (task := read_run(args.run).task) != "unet":
        raise ClipsonicError(f"--bundle-clip/--no-bundle-clip are for UNet runs; {args.run} is a {task} run")
    out = export_run(args.run, out=args.out, step=args.step, data=args.data, **bundle)
    print(f"exported: {out}" + (f" (CLIP bundled in {out / 'clip'})" if (out / "clip").is_dir() else ""))


ATTACH = {"prior": attach_prior, "vocoder": attach_vocoder, "clip": attach_clip}


def run_attach(args: argparse.Namespace) -> None:
    extra = {"clip_model": args.clip_model} if args.component == "prior" else {}
    ATTACH[args.component](args.pipeline, args.source, **extra)
    print(f"attached: {args.pipeline / args.component}")
