"""``clipsonic generate`` (query → audio), ``clipsonic vocode`` (audio → mel → audio), ``clipsonic mel``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.bridges import MODES
from clipsonic.builtin import builtin_prompts
from clipsonic.cli import options
from clipsonic.cli.options import command, deprecated_alias, device, progress_bar
from clipsonic.diffusion import DEFAULT_GUIDANCE_SCALE, SAMPLERS
from clipsonic.errors import ClipsonicError
from clipsonic.export import model_fingerprint
from clipsonic.media import load_audio, probe
from clipsonic.pipeline import DEFAULT_SAMPLER, DEFAULT_STEPS, CLIPSonicPipeline, edits, queries
from clipsonic.pipeline.outputs import (
    AUDIO_SUFFIXES,
    check_output_file,
    check_target,
    generate_files,
    model_sidecar,
    read_sidecar,
)
from clipsonic.pipeline.paths import BUILTIN_DIR
from clipsonic.pipeline.pipeline import DEFAULT_GUIDANCE_RESCALE
from clipsonic.plotting import save_mel_image
from clipsonic.vocoder import GriffinLimConfig, GriffinLimVocoder, load_vocoder, vocode_file

log = logging.getLogger(__name__)
MEL_IMAGE_SUFFIXES = (".png", ".pdf", ".svg")


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "generate", run_generate, "generate audio from text, an image or a video",
        "Generate sound with a pipeline directory. Modes: iq (image/video query; default for them), zs (CLIP text "
        "embedding as is), pd (through the diffusion prior; default for text when the pipeline has one), shift "
        "(mean-embedding shift) and knn (nearest training images). Without a prior, text defaults to the best-measured "
        "training-free bridge the pipeline has: knn (needs the stats image bank), else shift (stats), else zs. "
        "Every clip gets a sidecar NAME.json (query, seed, settings, model fingerprint); --from NAME.json makes "
        "the same clip again, and an unseeded run logs the seeds it drew. -o takes a .wav/.flac (one clip), a video file "
        "name (video query: a copy of the video with the new sound, its picture stream copied) or a directory "
        f"(NNN-<query>.wav per clip). --seconds rounds to a multiple of 8 mel frames (0.256 s) and is at most "
        f"{queries.MAX_SECONDS:g}; past the training length the UNet runs on overlapping windows of it, averaged at "
        "every step (--long windows), or window after window (--long continuation). --init-audio edits a sound: "
        "--strength makes a variation (0: the file itself, 1: a new sound), --mask START:END regenerates a span and "
        "keeps the rest; --continue FILE extends a recording to --seconds. Without a vocoder component the audio is "
        "made with Griffin-Lim.",
        "clipsonic generate --text 'a dog barking' -o bark.wav   # the built-in model (StampWorld)",
        "clipsonic generate --model builtin:sonicworld --text 'the red ball that is humming' -o hum.wav",
        "clipsonic generate --list-builtin-prompts",
        "clipsonic generate --model pipelines/vgg --text 'a dog barking' -o dog.wav",
        "clipsonic generate --model pipelines/vgg --text 'rain on a roof' --mode zs --guidance-scale 3 --seed 1",
        "clipsonic generate --model pipelines/vgg --image cat.jpg --num-samples 4 -o cats/",
        "clipsonic generate --model pipelines/vgg --video silent.mp4 -o with_sound.mp4",
        "clipsonic generate --model pipelines/vgg --prompts prompts.txt -o out/ --save-mel --steps 100",
        "clipsonic generate --model pipelines/vgg --text 'violin' --negative 'noise' --sampler ddpm --steps 1000",
        "clipsonic generate --model pipelines/vgg --text 'rain on a roof' --seconds 60 -o rain.wav",
        "clipsonic generate --model pipelines/vgg --image cat.jpg --init-audio dog.wav --strength 0.6 -o cat_dog.wav",
        "clipsonic generate --model pipelines/vgg --text 'a door slams' --init-audio room.wav --mask 1.5:2.5 -o door.wav",
        "clipsonic generate --model pipelines/vgg --text 'applause' --continue clap.wav --seconds 20 -o longer.wav")
    p.add_argument("--model", type=options.model, metavar="DIR",
                   help="pipeline directory, or builtin:NAME (default: the built-in StampWorld model; see "
                        "--list-builtin-prompts)")
    p.add_argument("--list-builtin-prompts", action="store_true",
                   help="print text queries the model knows (its prompts.txt; default: the built-in model's)")
    q = p.add_argument_group("query (exactly one kind)")
    q.add_argument("--text", action="append", help="text query (repeatable)")
    q.add_argument("--image", action="append", type=Path, help="image file (repeatable)")
    q.add_argument("--video", action="append", type=Path, help="video file (repeatable)")
    q.add_argument("--prompts", type=Path, metavar="FILE", help="text file, one query per line ('#' comments)")
    q.add_argument("--from", dest="replay", type=Path, metavar="NAME.json",
                   help="make a clip again from the sidecar written beside it (its query, seed and settings; "
                        "refused if the model changed); takes only -o, --model (a moved copy), --device, --clip-model, "
                        "--save-mel")
    s = p.add_argument_group("sampling")
    s.add_argument("--mode", choices=MODES, help="how the query conditions the model (see above)")
    s.add_argument("--guidance-scale", type=float,
                   help=f"classifier-free guidance weight w (default {DEFAULT_GUIDANCE_SCALE:g}, the paper's best FAD; "
                        "a distilled pipeline: the w it was distilled at)")
    deprecated_alias(s, "--guidance", "--guidance-scale", type=float, dest="guidance_scale")
    s.add_argument("--guidance-rescale", type=float, metavar="R",
                   help="how far a guided mel keeps the conditional branch's level and spread, 0..1 (default "
                        f"{DEFAULT_GUIDANCE_RESCALE:g}; 0 = plain guidance, louder and clipping at high w)")
    s.add_argument("--steps", type=int, help=f"sampling steps (default {DEFAULT_STEPS}; a distilled pipeline: its own; "
                                             "the paper: 1000)")
    s.add_argument("--sampler", choices=list(SAMPLERS),
                   help=f"(default {DEFAULT_SAMPLER}, the best measured: docs/benchmarks.md; a distilled pipeline: ddim; "
                        "the paper's setting: --sampler ddpm --steps 1000)")
    s.add_argument("--seed", type=int, help="seed of output 0; output i uses seed + i")
    s.add_argument("--num-samples", type=int, default=1, help="clips per query (default 1)")
    s.add_argument("--seconds", type=float, help="length (default: one training clip; a video's own)")
    s.add_argument("--negative", metavar="TEXT", help="text to steer away from (replaces the null condition)")
    s.add_argument("--video-frames", choices=queries.VIDEO_POOLING, default=queries.VIDEO_POOLING[0],
                   help="video: mean of --num-frames frames, or the first/middle frame (default mean)")
    s.add_argument("--num-frames", type=int, default=queries.DEFAULT_VIDEO_FRAMES,
                   help=f"frames averaged per video (default {queries.DEFAULT_VIDEO_FRAMES})")
    s.add_argument("--batch-size", type=int, default=8, help="text queries per pipeline call (default 8)")
    s.add_argument("--long", choices=edits.LONG_MODES,
                   help="past the training length: windows (default; overlapping windows averaged at every step), "
                        "continuation (window after window) or single (one long mel, which drifts)")
    e = p.add_argument_group("editing a sound")
    e.add_argument("--init-audio", type=Path, metavar="FILE", help="the sound to vary, inpaint or continue")
    e.add_argument("--strength", type=float, metavar="S",
                   help="variation strength 0..1 (0: the file as it is, 1: a new sound; default 1 with --mask)")
    e.add_argument("--mask", metavar="START:END", help="seconds to regenerate, keeping the rest (END empty: to the end)")
    e.add_argument("--continue", dest="continue_from", type=Path, metavar="FILE",
                   help="extend this recording to --seconds (longer than it): --init-audio FILE, generating after its end")
    r = p.add_argument_group("run")
    r.add_argument("-o", "--out", type=Path, default=Path("generated"), help="output file or directory (default generated/)")
    r.add_argument("--save-mel", action="store_true", help="also write each mel as a PNG")
    r.add_argument("--device", type=device, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    r.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="autocast dtype of the UNet (GPU)")
    r.add_argument("--vocoder", help="vocoder directory, or 'griffin-lim', instead of the pipeline's")
    r.add_argument("--clip-model", help="load the pipeline's CLIP from here (same weights, e.g. a local copy)")
    p.set_defaults(replayed_defaults={name: p.get_default(name) for name in _REPLAYED})

    p = command(sub, "vocode", run_vocode, "resynthesise a file's sound from its mel with a vocoder or Griffin-Lim",
                "Audio or video in → 16 kHz log-mel → vocoder → audio out: the paper's mel-reconstruction row, and a "
                "way to hear a vocoder, or with --griffin-lim what the front end keeps (no trained vocoder needed). "
                "The output lasts the input's length rounded down to whole hops (512 samples).",
                "clipsonic vocode clip.mp4 -o clip_bigvgan.wav --vocoder runs/vocoder",
                "clipsonic vocode speech.flac -o speech_gl.wav --griffin-lim --iters 100",
                "clipsonic vocode song.wav --start 30 --duration 4.096 -o out.wav --vocoder pipe/vocoder")
    _input_args(p, "audio file to write (.wav, .flac)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--vocoder", type=Path, help="vocoder directory (or a train-vocoder run directory)")
    which.add_argument("--griffin-lim", action="store_true", help="use Griffin-Lim (no trained vocoder needed)")
    p.add_argument("--iters", type=int, default=GriffinLimConfig().n_iter,
                   help=f"Griffin-Lim iterations (default {GriffinLimConfig().n_iter})")
    p.add_argument("--device", type=device, default="cpu", help="torch device for the vocoder (default cpu)")

    p = command(sub, "mel", run_mel, "plot the log-mel spectrogram of an audio or video file",
                "Plot the paper's log-mel (16 kHz, 64 bands, hop 512) of a file's sound.",
                "clipsonic mel clip.mp4 -o mel.png", "clipsonic mel song.flac --start 30 --duration 4.096 -o mel.png")
    _input_args(p, f"image file to write ({', '.join(MEL_IMAGE_SUFFIXES)})")


# The flags a sidecar replaces: --from refuses them rather than silently ignoring or mixing them.
_REPLAYED = ("text", "image", "video", "prompts", "mode", "guidance_scale", "guidance_rescale", "steps", "sampler", "seed",
             "num_samples", "seconds", "negative", "video_frames", "num_frames", "dtype", "vocoder", "init_audio",
             "strength", "mask", "continue_from", "long")


def _input_args(p: argparse.ArgumentParser, output: str) -> None:
    p.add_argument("input", type=Path, help="audio or video file")
    p.add_argument("-o", "--output", required=True, type=Path, help=output)
    p.add_argument("--start", type=float, help="start time in seconds")
    p.add_argument("--duration", type=float, help="duration in seconds")


def run_generate(args: argparse.Namespace) -> None:
    if args.list_builtin_prompts:
        print("\n".join(builtin_prompts(args.model)))
        return
    if args.replay is not None:
        return _replay(args)
    if args.prompts is not None and args.text:
        raise ClipsonicError("give --text or --prompts, not both")
    texts = queries.read_prompts(args.prompts) if args.prompts else args.text
    query = queries.parse_query(texts, args.image, args.video)
    # what can be checked before the slow load
    queries.check_positive_int("num_samples", args.num_samples, queries.MAX_ROWS)
    queries.check_positive_int("batch_size", args.batch_size, queries.MAX_ROWS)
    queries.check_positive_int("num_frames", args.num_frames, queries.MAX_VIDEO_FRAMES)
    queries.expand_seeds(args.seed, None, len(query) * args.num_samples)
    check_target(args.out, len(query) * args.num_samples, query.kind)
    settings = dict(mode=args.mode, guidance_scale=args.guidance_scale, guidance_rescale=args.guidance_rescale,
                    num_inference_steps=args.steps,
                    sampler=args.sampler, seconds=args.seconds, negative_text=args.negative,
                    video_frames=args.video_frames, num_frames=args.num_frames, **_edit_settings(args))
    _generate(args, query, settings, args.model, args.vocoder, args.dtype, num_samples=args.num_samples,
              seed=args.seed, save_mel=args.save_mel)


def _edit_settings(args: argparse.Namespace) -> dict:
    """The pipeline's audio, strength, mask and long from --init-audio/--continue, --strength, --mask, --long."""
    audio, mask = args.init_audio, None
    if args.mask is not None:
        start, sep, end = args.mask.partition(":")
        try:
            mask = (float(start), float(end) if end.strip() else None)
        except ValueError:
            sep = ""
        if not sep:
            raise ClipsonicError(f"--mask takes START:END in seconds (END may be empty: to the end), got {args.mask!r}")
    if args.continue_from is not None:
        if audio is not None or mask is not None:
            raise ClipsonicError("--continue FILE regenerates everything after the file; drop --init-audio and --mask "
                                 "(or use --init-audio FILE --mask START:)")
        audio = args.continue_from
    length = None if audio is None else probe(audio).duration  # a missing or unreadable file fails before the load
    if args.continue_from is not None and (args.seconds is None or args.seconds <= length):
        raise ClipsonicError(f"--continue {args.continue_from} needs --seconds longer than the file ({length:.2f} s)")
    edits.check_edit_args(args.strength, mask, args.long)
    if audio is None and (args.strength is not None or mask is not None):
        raise ClipsonicError("--strength and --mask edit a sound: give it with --init-audio FILE")
    return dict(audio=audio, strength=args.strength, mask=mask, long=args.long)


def _replay(args: argparse.Namespace) -> None:
    """``--from NAME.json``: the sidecar's query, seed and settings with the model it names (or ``--model``)."""
    if given := [name for name, default in args.replayed_defaults.items() if getattr(args, name) not in (default, None)]:
        flag = "--" + given[0].replace("_", "-")
        raise ClipsonicError(f"--from takes the query and settings from {args.replay}; drop {flag} (or generate "
                             "without --from)")
    side = read_sidecar(args.replay)
    query = queries.parse_query(**side["query"])
    check_target(args.out, 1, query.kind)
    settings = {name: value for name, value in side["settings"].items() if value is not None}
    _generate(args, query, settings, args.model if args.model is not None else side.get("model"), side.get("vocoder"),
              side.get("dtype"), num_samples=1, seed=side["seed"], save_mel=args.save_mel,
              clip_model=args.clip_model or side.get("clip_model"), replaying=side)


def _generate(args: argparse.Namespace, query: queries.Query, settings: dict, model, vocoder, dtype, *,
              num_samples: int, seed: int | None, save_mel: bool, clip_model: str | None = None,
              replaying: dict | None = None) -> None:
    """Load the pipeline (after checking a replayed sidecar's model fingerprint), generate, write the clips with
    their sidecars and print their paths."""
    clip_model = clip_model or args.clip_model
    fingerprint = None if replaying is None else model_fingerprint(model if model is not None else BUILTIN_DIR)
    if replaying is not None and fingerprint != replaying["model_fingerprint"]:
        raise ClipsonicError(f"{args.replay} was made with {replaying.get('model') or 'the built-in model'} "
                             f"(fingerprint {replaying['model_fingerprint']}) but {model or 'the built-in model'} has "
                             f"fingerprint {fingerprint}; pass the pipeline it was made with (--model DIR)")
    pipe = CLIPSonicPipeline.from_pretrained(model, device=args.device, dtype=dtype, clip_model=clip_model,
                                             vocoder=vocoder)
    if pipe.vocoder_is_fallback and model is not None:  # the built-in model chose Griffin-Lim (its card says why)
        print(f"note: {model} has no vocoder; using Griffin-Lim (lower quality; see clipsonic train-vocoder)",
              file=sys.stderr)
    sidecar = model_sidecar(pipe, model, fingerprint=fingerprint, clip_model=clip_model, dtype=dtype, vocoder=vocoder)
    with progress_bar() as bar:
        written = generate_files(pipe, query, args.out, batch_size=args.batch_size, num_samples=num_samples, seed=seed,
                                 save_mel=save_mel, progress=bar, sidecar=sidecar, **settings)
    print("\n".join(map(str, written)))


def run_vocode(args: argparse.Namespace) -> None:
    check_output_file(args.output, AUDIO_SUFFIXES, "an audio file")  # before any slow work
    vocoder = (GriffinLimVocoder(config=GriffinLimConfig(n_iter=args.iters)) if args.griffin_lim
               else load_vocoder(args.vocoder, device=args.device))
    seconds = vocode_file(args.input, args.output, vocoder, start=args.start, duration=args.duration)
    log.info("wrote %s (%.3f s at %d Hz, %s)", args.output, seconds, vocoder.sample_rate, vocoder.type_name)


def run_mel(args: argparse.Namespace) -> None:
    check_output_file(args.output, MEL_IMAGE_SUFFIXES, "an image file")
    config = MelConfig()
    audio = load_audio(args.input, sample_rate=config.sample_rate, start=args.start, duration=args.duration)
    logmel = mel_spectrogram(torch.from_numpy(audio), config)
    save_mel_image(logmel.numpy(), config, args.output, title=args.input.name)
    log.info("wrote %s (%d mel frames)", args.output, logmel.shape[-1])
