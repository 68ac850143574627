"""Bad inputs to generate, vocode, mel, export and attach: one error line, exit 2, no traceback, nothing written.

Every broken pipeline, vocoder, prior and CLIP folder is made once per module from the tiny random components
(tests/support), beside the valid ones, in one folder the harness watches for any change.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from support.bad_input import Case, check, error_line, snapshot
from support.media_files import truncate, write_audio, write_video
from support.synthetic_dataset import make_synthetic_dataset
from support.tiny_clip import make_tiny_clip
from support.tiny_pipeline import make_tiny_pipeline

from clipsonic.cli import main
from clipsonic.export import read_model_index
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.train import train
from clipsonic.vocoder import BigVGANVocoder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = data
        for parent in parents:
            node = node[parent]
        node[key] = value
    path.write_text(json.dumps(data))


def _bomb_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A PNG whose header claims 900 M pixels (PIL refuses it on open, before decoding anything)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _pipeline_variants(base: Path, good: Path, clip_dir: Path, vocoder_dir: Path) -> None:
    """base/p-<name>: copies of the good pipeline, each broken in one way."""
    def variant(name: str) -> Path:
        return Path(shutil.copytree(good, base / f"p-{name}", symlinks=True))

    shutil.copytree(good / "unet", base / "outside_unet")  # a loadable UNet outside every pipeline
    _edit_json(variant("escape-rel") / "model_index.json", components__unet="../outside_unet")
    _edit_json(variant("escape-abs") / "model_index.json", components__unet=str(base / "outside_unet"))
    _edit_json(variant("escape-dots") / "model_index.json", components__vocoder="unet/../../../outside_unet")
    _edit_json(variant("escape-newline") / "model_index.json", components__unet="unet\n")
    p = variant("escape-symlink")
    shutil.rmtree(p / "unet")
    (p / "unet").symlink_to(base / "outside_unet")
    (variant("index-not-json") / "model_index.json").write_text("{not json")
    (variant("index-empty") / "model_index.json").write_text("")
    (variant("index-list") / "model_index.json").write_text("[1, 2]")
    (variant("index-nested") / "model_index.json").write_text("[" * 100_000 + "]" * 100_000)
    (variant("index-latin1") / "model_index.json").write_bytes(b'{"caf\xe9": 1}')
    _edit_json(variant("index-components-list") / "model_index.json", components=["unet", "scheduler"])
    _edit_json(variant("index-components-int") / "model_index.json", components__unet=5)
    _edit_json(variant("index-training-list") / "model_index.json", training=[1])
    _edit_json(variant("index-clip-dim") / "model_index.json", clip_model__dim=999)
    _edit_json(variant("index-clip-str") / "model_index.json", clip_model="openai/clip")
    _edit_json(variant("index-mel-zero") / "model_index.json", mel__n_mels=0)
    _edit_json(variant("index-version") / "model_index.json", version=9)
    (variant("no-index") / "model_index.json").unlink()
    shutil.rmtree(variant("no-unet") / "unet")
    (variant("no-unet-weights") / "unet" / "model.safetensors").unlink()
    truncate(variant("unet-truncated") / "unet" / "model.safetensors")
    (variant("unet-empty") / "unet" / "model.safetensors").write_bytes(b"")
    (variant("unet-garbage") / "unet" / "model.safetensors").write_bytes(os.urandom(4096))
    (variant("unet-dir") / "unet" / "model.safetensors").unlink()
    (base / "p-unet-dir" / "unet" / "model.safetensors").mkdir()
    _edit_json(variant("unet-huge") / "unet" / "config.json", base_channels=10**6)  # 640 GB if built
    _edit_json(variant("unet-blocks") / "unet" / "config.json", num_res_blocks=10**6)
    _edit_json(variant("unet-cond") / "unet" / "config.json", cond_dim=64)
    _edit_json(variant("unet-type") / "unet" / "config.json", base_channels="wide")
    _edit_json(variant("unet-nan") / "unet" / "config.json", dropout=float("nan"))
    _edit_json(variant("sched-zero") / "scheduler" / "config.json", num_timesteps=0)
    _edit_json(variant("sched-huge") / "scheduler" / "config.json", num_timesteps=10**9)  # 8 GB per schedule array
    (variant("sched-missing") / "scheduler" / "config.json").unlink()
    truncate(variant("prior-truncated") / "prior" / "prior.safetensors")
    _edit_json(variant("prior-deep") / "prior" / "config.json", prior__network__depth=10**6)
    _edit_json(variant("prior-huge") / "prior" / "config.json", prior__network__width=2**20)
    _edit_json(variant("prior-clip") / "prior" / "config.json", clip_model__fingerprint="0" * 16)
    truncate(variant("stats-truncated") / "stats" / "stats.safetensors", 0.3)
    (variant("stats-missing") / "stats" / "stats.safetensors").unlink()
    save_file({"mean_image_embedding": torch.zeros(16), "image_bank": torch.zeros(8, 16).half()},
              str(variant("stats-dim") / "stats" / "stats.safetensors"))
    (variant("stats-list") / "stats" / "stats.safetensors").write_bytes(b"[]")
    p = variant("clip-truncated")
    shutil.copytree(clip_dir, p / "clip")
    truncate(p / "clip" / "model.safetensors")
    _edit_json(p / "model_index.json", components__clip="clip")
    p = variant("clip-pickle")
    shutil.copytree(clip_dir, p / "clip")
    (p / "clip" / "model.safetensors").rename(p / "clip" / "pytorch_model.bin")
    _edit_json(p / "model_index.json", components__clip="clip")
    p = variant("clip-huge")
    shutil.copytree(clip_dir, p / "clip")
    _edit_json(p / "clip" / "config.json", text_config__hidden_size=2**16, vision_config__hidden_size=2**16)
    _edit_json(p / "model_index.json", components__clip="clip")
    p = variant("vocoder-truncated")
    shutil.copytree(vocoder_dir, p / "vocoder")
    truncate(p / "vocoder" / "bigvgan_generator.safetensors")
    _edit_json(p / "model_index.json", components__vocoder="vocoder")


def _vocoder_variants(base: Path, good: Path) -> None:
    def variant(name: str) -> Path:
        return Path(shutil.copytree(good, base / f"v-{name}"))

    truncate(variant("truncated") / "bigvgan_generator.safetensors")
    (variant("no-weights") / "bigvgan_generator.safetensors").unlink()
    (variant("config-not-json") / "config.json").write_text("{")
    (variant("config-number") / "config.json").write_text("7")
    _edit_json(variant("huge") / "config.json", generator__upsample_initial_channel=10**6)
    _edit_json(variant("type") / "config.json", type="wavenet")
    _edit_json(variant("type-list") / "config.json", type=["bigvgan"])
    _edit_json(variant("mel") / "config.json", mel__n_mels=80)
    _edit_json(variant("weights-escape") / "config.json", weights="../v-truncated/bigvgan_generator.safetensors")
    _edit_json(variant("zero-rate") / "config.json", mel__sample_rate=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_clip_dir) -> Path:
    root = tmp_path_factory.mktemp("bad_pipeline")
    good = make_tiny_pipeline(root / "pipe", tiny_clip_dir)
    vocoder = BigVGANVocoder.from_preset("tiny", read_model_index(good).mel).save_pretrained(root / "vocoder")
    _pipeline_variants(root, good, tiny_clip_dir, vocoder)
    _vocoder_variants(root, vocoder)
    write_audio(root / "a.wav", seconds=1.0, sample_rate=16000)
    write_video(root / "v.mp4", seconds=1.0, size=(32, 32), audio_codec=None)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(root / "pic.png")
    _bomb_png(root / "bomb.png")
    (root / "notes.txt").write_text("not media\n")
    (root / "empty.wav").write_bytes(b"")
    (root / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    (root / "comments.txt").write_text("# nothing\n\n")
    (root / "dir.wav").mkdir()
    (root / "dir.png").mkdir()
    (root / "empty-dir").mkdir()
    make_tiny_clip(root / "other_clip", seed=1)  # same shape, other weights
    shutil.copytree(tiny_clip_dir, root / "clip-pickle")
    (root / "clip-pickle" / "model.safetensors").rename(root / "clip-pickle" / "pytorch_model.bin")
    truncate(Path(shutil.copytree(tiny_clip_dir, root / "clip-truncated")) / "model.safetensors")
    (root / "run-junk").mkdir()
    (root / "run-junk" / "config.json").write_text("{")
    _tiny_run(root / "run")
    return root


def _tiny_run(run: Path) -> None:
    ds = make_synthetic_dataset(run.parent / "ds", 6, 2, frames=16, shards=1)
    train(ds.root, run, {"train": dict(preset="tiny", batch_size=2, max_steps=2, save_every=2, num_workers=0,
                                       val_every=0, sample_every=0, log_every=1, bank_size=4, export_at_end=False)})


@pytest.fixture(scope="module", autouse=True)
def load_the_good_pipeline_once(base):
    """Cases that break the query or an option, not the folder, share one loaded pipeline (loading is most of
    their time); every other folder goes through the real loader each time."""
    load, loaded = CLIPSonicPipeline.from_pretrained.__func__, {}

    def cached(cls, path=None, device=None, dtype=None, **kwargs):
        if path is None or Path(path) != base / "pipe" or any(kwargs.values()):
            return load(cls, path, device, dtype, **kwargs)
        if (device, dtype) not in loaded:
            loaded[device, dtype] = load(cls, path, device, dtype)
        return loaded[device, dtype]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CLIPSonicPipeline, "from_pretrained", classmethod(cached))
        yield


T = "{tmp}"
G = ("-q", "generate", "--steps", "2")
GM = (*G, "--model", f"{T}/pipe")
ESCAPE = r"(leads outside|not a plain relative path)"
BAD_SAFETENSORS = r"not a readable safetensors file .*corrupt or truncated"

GENERATE = [
    # the pipeline folder and its model_index.json
    *(Case(f"generate-{name}", (*G, "--model", f"{T}/p-{name}", "--text", "dog", "-o", f"{T}/o.wav"), match)
      for name, match in [
          ("escape-rel", ESCAPE), ("escape-abs", ESCAPE), ("escape-dots", ESCAPE), ("escape-newline", ESCAPE),
          ("escape-symlink", ESCAPE), ("index-not-json", "not a readable clipsonic-pipeline file"),
          ("index-empty", "not a readable"), ("index-list", "not a clipsonic-pipeline file"),
          ("index-nested", "nested too deeply"), ("index-latin1", "not a readable"),
          ("index-components-list", "components.* must map"), ("index-components-int", "components.* must map"),
          ("index-training-list", "training.* must be a JSON object"), ("index-clip-dim", "32-d"),
          ("index-clip-str", "not a CLIP reference"), ("index-mel-zero", "n_mels"),
          ("index-version", "version 9"), ("no-index", "no model_index.json"),
          ("no-unet", "'unet' is listed but"), ("no-unet-weights", "no model.safetensors"),
          ("unet-truncated", BAD_SAFETENSORS), ("unet-empty", BAD_SAFETENSORS), ("unet-garbage", BAD_SAFETENSORS),
          ("unet-dir", "no model.safetensors"), ("unet-huge", r"do not fit config.json \(.*shapes differ"),
          ("unet-blocks", "32 num_res_blocks"), ("unet-cond", "do not fit config.json"),
          ("unet-type", "base_channels must be an integer"), ("unet-nan", "dropout"),
          ("sched-zero", "num_timesteps"), ("sched-huge", r"num_timesteps must be an integer in 2\.\.100000"), ("sched-missing", "'scheduler' is listed but"),
          ("prior-truncated", BAD_SAFETENSORS), ("prior-huge", "do not fit"), ("prior-deep", "depth must be at most 64"), ("prior-clip", "prior works in"),
          ("stats-truncated", "unreadable stats.*re-export"), ("stats-missing", "unreadable stats"),
          ("stats-dim", "16-d embeddings, but the CLIP is 32-d"), ("stats-list", "unreadable stats"),
          ("clip-truncated", BAD_SAFETENSORS), ("clip-pickle", "CLIP loading needs model.safetensors"),
          ("clip-huge", "CLIP model weights do not fit"), ("vocoder-truncated", BAD_SAFETENSORS)]),
    Case("generate-model-missing", (*G, "--model", f"{T}/nope", "--text", "dog", "-o", f"{T}/o.wav"), "no model_index"),
    Case("generate-model-file", (*G, "--model", f"{T}/notes.txt", "--text", "dog", "-o", f"{T}/o.wav"), "no model_index"),
    Case("generate-clip-model-missing", (*GM, "--text", "dog", "-o", f"{T}/o.wav", "--clip-model", f"{T}/nope"),
         "does not exist"),
    Case("generate-clip-model-other", (*GM, "--text", "dog", "-o", f"{T}/o.wav", "--clip-model", f"{T}/other_clip"),
         "pass the CLIP the pipeline was trained with"),
    Case("generate-clip-model-pickle", (*GM, "--text", "dog", "-o", f"{T}/o.wav", "--clip-model", f"{T}/clip-pickle"),
         "needs model.safetensors"),
    Case("generate-vocoder-missing", (*GM, "--text", "dog", "-o", f"{T}/o.wav", "--vocoder", f"{T}/nope"),
         "no such vocoder directory"),
    Case("generate-vocoder-mel", (*GM, "--text", "dog", "-o", f"{T}/o.wav", "--vocoder", f"{T}/v-mel"), "n_mels|mel"),
    Case("generate-vocoder-huge", (*GM, "--text", "dog", "-o", f"{T}/o.wav", "--vocoder", f"{T}/v-huge"), "do not fit"),
    # queries
    Case("generate-no-query", (*GM, "-o", f"{T}/o.wav"), "no query"),
    Case("generate-two-kinds", (*GM, "--text", "a", "--image", f"{T}/pic.png", "-o", f"{T}/o.wav"), "one kind of query"),
    Case("generate-text-and-prompts", (*GM, "--text", "a", "--prompts", f"{T}/comments.txt"), "not both"),
    Case("generate-empty-text", (*GM, "--text", "  ", "-o", f"{T}/o.wav"), "empty or only whitespace"),
    Case("generate-prompts-latin1", (*GM, "--prompts", f"{T}/latin1.txt", "-o", f"{T}/o"), r"latin1.txt: cannot read"),
    Case("generate-prompts-comments", (*GM, "--prompts", f"{T}/comments.txt", "-o", f"{T}/o"), "no prompts"),
    Case("generate-prompts-missing", (*GM, "--prompts", f"{T}/nope.txt", "-o", f"{T}/o"), "cannot read the prompt"),
    Case("generate-prompts-dir", (*GM, "--prompts", f"{T}/empty-dir", "-o", f"{T}/o"), "cannot read the prompt"),
    Case("generate-image-missing", (*GM, "--image", f"{T}/nope.png", "-o", f"{T}/o.wav"), "no such image"),
    Case("generate-image-text", (*GM, "--image", f"{T}/notes.txt", "-o", f"{T}/o.wav"), "not a readable image"),
    Case("generate-image-bomb", (*GM, "--image", f"{T}/bomb.png", "-o", f"{T}/o.wav"), "decompression bomb"),
    Case("generate-image-dir", (*GM, "--image", f"{T}/empty-dir", "-o", f"{T}/o.wav"), "not a readable image"),
    Case("generate-video-png", (*GM, "--video", f"{T}/pic.png", "-o", f"{T}/o.wav"), "still image"),
    Case("generate-video-audio", (*GM, "--video", f"{T}/a.wav", "-o", f"{T}/o.wav"), "no video stream"),
    Case("generate-video-missing", (*GM, "--video", f"{T}/nope.mp4", "-o", f"{T}/o.wav"), "not found"),
    Case("generate-video-empty", (*GM, "--video", f"{T}/empty.wav", "-o", f"{T}/o.wav"), "empty file"),
    # sampling options
    *(Case(f"generate-{flag[2:]}-{name}", (*GM, "--text", "dog", "-o", f"{T}/o.wav", flag, value), match)
      for flag, name, value, match in [
          ("--steps", "zero", "0", r"num_inference_steps must be an integer in 1\.\.1000"),
          ("--steps", "over", "100000", r"1\.\.1000"), ("--steps", "text", "many", "invalid int value"),
          ("--guidance-scale", "nan", "nan", "guidance_scale must be a finite number"),
          ("--guidance-scale", "inf", "inf", "guidance_scale must be a finite number"),
          ("--guidance-scale", "negative", "-1", "guidance_scale must be"),
          ("--guidance-rescale", "over", "1.5", r"guidance_rescale must be in \[0, 1\]"),
          ("--guidance-rescale", "nan", "nan", r"guidance_rescale must be in \[0, 1\]"),
          ("--seed", "2to64", str(2**64), "outside 0..2"), ("--seed", "negative", "-1", "seed -1 is outside"),
          ("--seed", "float", "1.5", "invalid int value"),
          ("--num-samples", "zero", "0", "num_samples must be"), ("--num-samples", "huge", str(10**9), r"1\.\.4096"),
          ("--batch-size", "zero", "0", "batch_size must be"), ("--seconds", "zero", "0", "seconds must be a positive"),
          ("--seconds", "nan", "nan", "seconds must be a positive"), ("--seconds", "long", "61", "60-s limit"),
          ("--num-frames", "zero", "0", "num_frames must be"), ("--mode", "iq-for-text", "iq", "does not take a text"),
          ("--mode", "unknown", "loud", "invalid choice"), ("--sampler", "unknown", "euler9", "invalid choice"),
          ("--dtype", "unknown", "int8", "invalid choice"), ("--device", "potato", "potato", "not a torch device"),
          ("--negative", "blank", " ", "negative_text must be a non-empty")]),
    Case("generate-seed-overflow-rows", (*GM, "--text", "dog", "-o", f"{T}/o", "--num-samples", "2",
                                         "--seed", str(2**63 - 1)), r"seed 9223372036854775808 is outside"),
    Case("generate-mode-zs-image", (*GM, "--image", f"{T}/pic.png", "-o", f"{T}/o.wav", "--mode", "zs"),
         "does not take a image"),
    # outputs
    Case("generate-out-suffix", (*GM, "--text", "dog", "-o", f"{T}/o.xyz"), r"unknown output type '.xyz'.*\.wav"),
    Case("generate-out-under-file", (*GM, "--text", "dog", "-o", f"{T}/notes.txt/o.wav"), "not a writable directory"),
    Case("generate-out-dir-under-file", (*GM, "--text", "dog", "-o", f"{T}/notes.txt/out"), "not a writable directory"),
    Case("generate-out-one-file-two-rows", (*GM, "--text", "dog", "--num-samples", "2", "-o", f"{T}/o.wav"),
         "2 clips to write but -o"),
    Case("generate-out-video-for-text", (*GM, "--text", "dog", "-o", f"{T}/o.mp4"), "is a video file"),
]

VOCODE = [
    Case("vocode-input-missing", ("vocode", f"{T}/nope.wav", "-o", f"{T}/o.wav", "--griffin-lim"), "not found"),
    Case("vocode-input-dir", ("vocode", f"{T}/empty-dir", "-o", f"{T}/o.wav", "--griffin-lim"), "not a regular file"),
    Case("vocode-input-empty", ("vocode", f"{T}/empty.wav", "-o", f"{T}/o.wav", "--griffin-lim"), "empty file"),
    Case("vocode-input-text", ("vocode", f"{T}/notes.txt", "-o", f"{T}/o.wav", "--griffin-lim"), "not a readable media"),
    Case("vocode-input-png", ("vocode", f"{T}/pic.png", "-o", f"{T}/o.wav", "--griffin-lim"), "still image"),
    Case("vocode-out-suffix", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.mp3", "--griffin-lim"), r"'.mp3' files.*\.wav, \.flac"),
    Case("vocode-out-no-suffix", ("vocode", f"{T}/a.wav", "-o", f"{T}/o", "--griffin-lim"), "suffix-less"),
    Case("vocode-out-dir", ("vocode", f"{T}/a.wav", "-o", f"{T}/dir.wav", "--griffin-lim"), "is a directory"),
    Case("vocode-out-under-file", ("vocode", f"{T}/a.wav", "-o", f"{T}/notes.txt/o.wav", "--griffin-lim"),
         "not a writable directory"),
    Case("vocode-no-vocoder", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav"), "one of the arguments"),
    Case("vocode-iters-negative", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--griffin-lim", "--iters", "-1"),
         r"n_iter must be in \[0, 10000\]"),
    Case("vocode-iters-huge", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--griffin-lim", "--iters", str(10**9)),
         "n_iter must be in"),
    Case("vocode-start-negative", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--griffin-lim", "--start", "-1"),
         "start must be a finite number"),
    Case("vocode-start-nan", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--griffin-lim", "--start", "nan"),
         "start must be a finite number"),
    Case("vocode-start-past-end", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--griffin-lim", "--start", "5"),
         "beyond the end"),
    Case("vocode-duration-zero", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--griffin-lim", "--duration", "0"),
         "duration must be > 0"),
    Case("vocode-too-short", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--griffin-lim", "--duration", "0.01"),
         "samples of audio; need more"),
    Case("vocode-device", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--griffin-lim", "--device", "gpu9"),
         "not a torch device"),
    Case("vocode-vocoder-missing", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--vocoder", f"{T}/nope"),
         "no such vocoder directory"),
    Case("vocode-vocoder-not-one", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--vocoder", f"{T}/empty-dir"),
         "not a vocoder directory"),
    *(Case(f"vocode-vocoder-{name}", ("vocode", f"{T}/a.wav", "-o", f"{T}/o.wav", "--vocoder", f"{T}/v-{name}"), match)
      for name, match in [("truncated", BAD_SAFETENSORS), ("no-weights", "weights file .* is missing"),
                          ("config-not-json", "not a readable vocoder config"),
                          ("config-number", "not a vocoder directory"), ("huge", r"do not fit config.json"),
                          ("type", "unknown vocoder type 'wavenet'"), ("type-list", "unknown vocoder type"),
                          ("weights-escape", ESCAPE), ("zero-rate", "sample_rate")]),
]

MEL = [
    Case("mel-out-suffix", ("mel", f"{T}/a.wav", "-o", f"{T}/x.xyz"), r"'.xyz' files; give an image file \(.png, .pdf, .svg\)"),
    Case("mel-out-wav", ("mel", f"{T}/a.wav", "-o", f"{T}/x.wav"), r"'.wav' files"),
    Case("mel-out-dir", ("mel", f"{T}/a.wav", "-o", f"{T}/dir.png"), "dir.png is a directory"),
    Case("mel-out-under-file", ("mel", f"{T}/a.wav", "-o", f"{T}/notes.txt/m.png"), "not a writable directory"),
    Case("mel-input-missing", ("mel", f"{T}/nope.wav", "-o", f"{T}/m.png"), "not found"),
    Case("mel-input-text", ("mel", f"{T}/notes.txt", "-o", f"{T}/m.png"), "not a readable media"),
    Case("mel-input-silent-video", ("mel", f"{T}/v.mp4", "-o", f"{T}/m.png"), "audio"),
    Case("mel-input-empty", ("mel", f"{T}/empty.wav", "-o", f"{T}/m.png"), "empty file"),
    Case("mel-start-nan", ("mel", f"{T}/a.wav", "-o", f"{T}/m.png", "--start", "nan"), "start must be a finite"),
    Case("mel-duration-negative", ("mel", f"{T}/a.wav", "-o", f"{T}/m.png", "--duration", "-2"), "duration"),
    Case("mel-start-text", ("mel", f"{T}/a.wav", "-o", f"{T}/m.png", "--start", "soon"), "invalid float"),
]

EXPORT = [
    Case("export-run-missing", ("export", f"{T}/nope"), "nope"),
    Case("export-run-file", ("export", f"{T}/notes.txt"), "notes.txt"),
    Case("export-run-empty", ("export", f"{T}/empty-dir"), "empty-dir"),
    Case("export-run-junk-config", ("export", f"{T}/run-junk"), "config.json"),
    Case("export-step-missing", ("export", f"{T}/run", "--step", "999", "-o", f"{T}/exp"), "999|checkpoint"),
    Case("export-step-text", ("export", f"{T}/run", "--step", "last"), "invalid int"),
    Case("export-out-under-file", ("export", f"{T}/run", "-o", f"{T}/notes.txt/exp"), "notes.txt is a file"),
    Case("export-out-is-file", ("export", f"{T}/run", "-o", f"{T}/notes.txt"), "notes.txt is a file"),
    Case("export-out-not-pipeline", ("export", f"{T}/run", "-o", f"{T}/empty-dir"), "not a pipeline directory"),
]

ATTACH = [
    Case("attach-unknown-component", ("attach", "unet", f"{T}/pipe", f"{T}/vocoder"), "invalid choice"),
    Case("attach-pipeline-missing", ("attach", "vocoder", f"{T}/nope", f"{T}/vocoder"), "no model_index"),
    Case("attach-pipeline-escape", ("attach", "vocoder", f"{T}/p-escape-rel", f"{T}/vocoder"), ESCAPE),
    Case("attach-pipeline-bad-stats", ("attach", "vocoder", f"{T}/p-stats-truncated", f"{T}/vocoder"), "unreadable stats"),
    Case("attach-pipeline-index-not-json", ("attach", "prior", f"{T}/p-index-not-json", f"{T}/pipe/prior"), "not a readable"),
    Case("attach-vocoder-missing", ("attach", "vocoder", f"{T}/pipe", f"{T}/nope"), "no such vocoder"),
    Case("attach-vocoder-truncated", ("attach", "vocoder", f"{T}/pipe", f"{T}/v-truncated"), BAD_SAFETENSORS),
    Case("attach-vocoder-mel", ("attach", "vocoder", f"{T}/pipe", f"{T}/v-mel"), "mel"),
    Case("attach-vocoder-huge", ("attach", "vocoder", f"{T}/pipe", f"{T}/v-huge"), "do not fit"),
    Case("attach-prior-missing", ("attach", "prior", f"{T}/pipe", f"{T}/nope"), "no such prior"),
    Case("attach-prior-not-one", ("attach", "prior", f"{T}/pipe", f"{T}/empty-dir"), "not a prior directory"),
    Case("attach-prior-truncated", ("attach", "prior", f"{T}/pipe", f"{T}/p-prior-truncated/prior"), BAD_SAFETENSORS),
    Case("attach-prior-huge", ("attach", "prior", f"{T}/pipe", f"{T}/p-prior-huge/prior"), "do not fit"),
    Case("attach-prior-other-clip", ("attach", "prior", f"{T}/pipe", f"{T}/p-prior-clip/prior"), "prior works in"),
    Case("attach-clip-missing", ("attach", "clip", f"{T}/pipe", f"{T}/nope"), "does not exist"),
    Case("attach-clip-pickle", ("attach", "clip", f"{T}/pipe", f"{T}/clip-pickle"), "needs model.safetensors"),
    Case("attach-clip-truncated", ("attach", "clip", f"{T}/pipe", f"{T}/clip-truncated"), BAD_SAFETENSORS),
    Case("attach-clip-other", ("attach", "clip", f"{T}/pipe", f"{T}/other_clip"), "bundle the CLIP it was trained with"),
    Case("attach-clip-not-clip", ("attach", "clip", f"{T}/pipe", f"{T}/vocoder"), "does not hold a CLIP model"),
]

CASES = GENERATE + VOCODE + MEL + EXPORT + ATTACH


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, base, capsys):
    check(case, base, capsys)


def _argv(base: Path, *args: str) -> list[str]:
    return [a.replace(T, str(base)) for a in args]


def test_escaping_components_are_never_read(base, capsys, monkeypatch):
    """The refused folders hold a loadable UNet: the refusal, not a load failure, stops them."""
    opened = []
    monkeypatch.setattr("clipsonic.models.weights.read_shapes", lambda path, what: opened.append(path))
    for name in ("escape-rel", "escape-abs", "escape-symlink"):
        error_line(["generate", "--model", str(base / f"p-{name}"), "--text", "dog", "-o", str(base / "o.wav")], capsys)
    assert opened == []


def test_attach_with_a_bad_source_leaves_the_pipeline_as_it_was(base, capsys):
    before = snapshot(base / "pipe")
    for component, source in (("vocoder", "v-truncated"), ("prior", "p-prior-huge/prior"), ("clip", "clip-pickle")):
        error_line(["attach", component, str(base / "pipe"), str(base / source)], capsys)
    assert snapshot(base / "pipe") == before and not list(base.glob(".pipe*")) and not list((base / "pipe").glob(".*"))


def test_read_only_destinations_are_refused_before_any_work(base, capsys, monkeypatch):
    """As root every folder is writable, so a read-only one is simulated: refused before any model or file loads."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    for argv in (("vocode", f"{T}/a.wav", "-o", f"{T}/ro/o.wav", "--vocoder", f"{T}/v-truncated"),
                 ("mel", f"{T}/nope.wav", "-o", f"{T}/ro/m.png"), (*GM, "--text", "dog", "-o", f"{T}/ro")):
        assert "is not a writable directory" in error_line(_argv(base, *argv), capsys)
    assert not (base / "ro").exists()


def test_attach_refuses_a_pipeline_another_process_is_writing(base, capsys):
    fd = os.open(base / "pipe", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = check(Case("attach-locked", ("attach", "vocoder", f"{T}/pipe", f"{T}/vocoder"), "in use by another"),
                     base, capsys)
    finally:
        os.close(fd)
    assert "attach vocoder" in line


def test_decompression_bomb_warning_is_refused_too(base, capsys, monkeypatch):
    """Between MAX_IMAGE_PIXELS and twice that PIL only warns; that is refused as well."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # pic.png has 1024 pixels: warning, not error
    line = error_line(_argv(base, *GM, "--image", f"{T}/pic.png", "-o", f"{T}/o.wav"), capsys)
    assert "decompression bomb" in line and not (base / "o.wav").exists()


def test_broken_pipe_is_quiet(capsys, monkeypatch):
    """`clipsonic generate --list-builtin-prompts | head -0`: the reader is gone before the first write."""
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w", buffering=1) as stdout:  # line-buffered: as a long listing fills a pipe's buffer
        monkeypatch.setattr("sys.stdout", stdout)
        rc = main(["generate", "--list-builtin-prompts"])
        monkeypatch.undo()
    assert rc == 141 and capsys.readouterr().err == ""


def test_good_inputs_still_work(base, capsys):
    """The fixtures the cases break are valid: the same commands with them succeed."""
    assert main(["-q", "vocode", str(base / "a.wav"), "-o", str(base / "out" / "a.wav"), "--vocoder",
                 str(base / "vocoder")]) == 0
    assert main(["-q", "mel", str(base / "a.wav"), "-o", str(base / "out" / "a.svg")]) == 0
    assert main(_argv(base, *GM, "--text", "dog", "-o", f"{T}/out/d.wav", "--seed", str(2**63 - 1))) == 0
    assert sorted(p.name for p in (base / "out").iterdir()) == ["a.svg", "a.wav", "d.json", "d.wav"]  # d.json: its sidecar
    shutil.rmtree(base / "out")
