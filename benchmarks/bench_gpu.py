"""The GPU run of docs/benchmarks.md ("GPU"): benchmarks/gpu.sh calls this (its header says how to run it on a
lent GPU machine). Random weights throughout: speed does not depend on training.

Sections, each in its own try (a failure loses only its own rows), printed as each row is measured and written
after each one to OUT/gpu.json and OUT/gpu.md:

- preprocess: a CLIP of ViT-L/14's real configuration (transformers' CLIPConfig of openai/clip-vit-large-patch14,
  random weights, saved in-process and loaded through ``load_clip``): load seconds; images/s at batch 64 in fp16,
  the model alone (pixels already on the device) and through ``encode_images`` (the image processor on 320×240
  frames, as preprocess calls it); the mel front end on 10-s waveforms (on the CPU with one thread, as in a
  preprocess worker, and on the GPU).
- generate: ``CLIPSonicPipeline`` (paper MelUNet, paper BigVGAN, the CLIP above), a text query → a 10-s clip (312
  frames: ``seconds`` rounds to the UNet's 8-frame block, as ``generate --seconds 10`` does) with the default sampler at 25 steps and classifier-free guidance (one forward of 2B per step), UNet in
  bf16 autocast on CUDA; batch 1 and 16, after a warm-up call; beside it the vocoder alone (the fastest of the
  repeats, bench_vocoder.time_vocoder).
- distilled: the same pipeline at K = 4 one-pass steps (guidance_scale 1 runs the conditional branch alone). A
  distilled student has the teacher's network with the guidance folded in, so this is its cost: timing does not
  depend on the weights.
- train, train-compile: the paper preset's training step (loss, backward, AdamW; no data loading, no EMA) in bf16
  autocast at the paper's batch (64 per process) of 10-s mels, eager then ``torch.compile``: samples/s and peak
  memory (``torch.cuda.max_memory_allocated``).

    .venv/bin/python benchmarks/bench_gpu.py --out out/gpu                 # full sizes, CUDA when present
    .venv/bin/python benchmarks/bench_gpu.py --tiny --out /tmp/gpu-tiny    # CPU, tiny sizes, ~20 s (the test's)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_vocoder import time_vocoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.tiny_pipeline import randomize_zero_layers  # noqa: E402

from clipsonic.audio import MelConfig, mel_spectrogram  # noqa: E402
from clipsonic.diffusion import DEFAULT_GUIDANCE_SCALE, DiffusionConfig, GaussianDiffusion  # noqa: E402
from clipsonic.encoders import ClipEncoder, ClipModelRef, load_clip, quiet_transformers  # noqa: E402
from clipsonic.files import write_bytes_atomic, write_json_atomic  # noqa: E402
from clipsonic.models import MelUNet  # noqa: E402
from clipsonic.pipeline import DEFAULT_SAMPLER, CLIPSonicPipeline  # noqa: E402
from clipsonic.pipeline.queries import resolve_frames  # noqa: E402
from clipsonic.sonicworld.clip import BOS, EOS, write_clip_image_processor, write_clip_tokenizer  # noqa: E402
from clipsonic.train.unet import TrainConfig  # noqa: E402
from clipsonic.vocoder import BigVGANVocoder  # noqa: E402

PROMPT = "a dog barking"
DISTILLED_STEPS = 4  # the goal: 4 network passes per clip
# openai/clip-vit-large-patch14's config.json (both towers use quick_gelu)
VIT_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")
VIT_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14, hidden_act="quick_gelu")
UNITS = {"load_s": "s load", "images_per_s": "images/s", "clips_per_s": "clips/s", "s_per_batch": "s/batch",
         "s_per_clip": "s/clip", "vocoder_s_per_batch": "s/batch vocoder", "unet_passes_per_clip": "UNet passes/clip",
         "samples_per_s": "samples/s", "step_s": "s/step", "peak_mem_gib": "GiB peak (CUDA)",
         "peak_rss_gib": "GiB peak RSS (process)"}


@dataclasses.dataclass(frozen=True)
class Sizes:
    unet: str  # MelUNet preset
    vocoder: str  # BigVGAN preset
    clip: tuple[dict, dict, int]  # text tower, vision tower, projection_dim
    clip_batch: int
    seconds: float  # clip length generated and trained on
    batches: tuple[int, ...]  # generation batches
    steps: int  # sampler steps of the guided rows
    train_batch: int
    train_steps: int  # timed training steps
    train_warmup: int  # untimed steps before them (compilation happens there)
    compile_backend: str
    repeats: int  # timed calls per cell (median)


FULL = Sizes("paper", "paper", (VIT_L14_TEXT, VIT_L14_VISION, 768), 64, 10.0, (1, 16), 25, TrainConfig.batch_size,
             10, 3, "inductor", 3)
# inductor would spend minutes compiling C++ on a CPU; "eager" still runs dynamo's capture of the real training step
TINY = Sizes("tiny", "tiny", (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   max_position_embeddings=77, vocab_size=1000),
                              dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=32, patch_size=8), 32),
             4, 1.024, (1, 2), 3, 2, 2, 1, "eager", 1)


class Report:
    """Rows ``(section, row, {metric: value})`` and failed sections; rewrites OUT/gpu.json and gpu.md after each."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.out, self.meta, self.rows, self.errors = out, meta, [], {}

    def add(self, section: str, row: str, **values: float) -> None:
        self.rows.append({"section": section, "row": row, "values": values})
        print(f"{section:<14} {row:<58} " + ", ".join(f"{v:.4g} {UNITS[k]}" for k, v in values.items()), flush=True)
        self.write()

    def fail(self, section: str, exc: BaseException) -> None:
        self.errors[section] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        print(f"{section}: FAILED ({self.errors[section]})", flush=True)
        self.write()

    def write(self) -> None:
        write_json_atomic(self.out / "gpu.json", {**self.meta, "rows": self.rows, "errors": self.errors})
        lines = [f"{self.meta['device']}; torch {self.meta['torch']}; {self.meta['date']}", "",
                 "| section | row | numbers |", "| --- | --- | --- |"]
        lines += [f"| {r['section']} | {r['row']} | " + ", ".join(f"{v:.4g} {UNITS[k]}" for k, v in r["values"].items())
                  + " |" for r in self.rows]
        lines += [f"\n{s}: FAILED: {e}" for s, e in self.errors.items()]
        write_bytes_atomic(self.out / "gpu.md", ("\n".join(lines) + "\n").encode())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls, the device synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux


class Bench:
    """The sections; the CLIP and the pipeline are built on first use and shared."""

    def __init__(self, sizes: Sizes, device: torch.device, report: Report, tmp: Path) -> None:
        self.sizes, self.device, self.report, self.tmp = sizes, device, report, tmp
        self.mel = MelConfig()
        self.dtype = torch.bfloat16 if device.type == "cuda" else None  # the UNet's autocast in generation
        self._encoder = self._pipeline = None

    def frames(self, unet: MelUNet) -> int:
        return resolve_frames(self.sizes.seconds, None, self.mel, unet.config.downsample_factor)

    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            text, vision, projection_dim = self.sizes.clip
            path = self.tmp / "clip"
            vocab = write_clip_tokenizer(path, [PROMPT])
            write_clip_image_processor(path, vision["image_size"])
            # heavy (seconds), so lazy; the CLIP modules directly, as clipsonic.encoders imports them
            from transformers.models.clip.configuration_clip import CLIPConfig
            from transformers.models.clip.modeling_clip import CLIPModel

            ids = dict(bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS])
            config = CLIPConfig(text_config={**text, **ids}, vision_config=vision, projection_dim=projection_dim)
            with torch.device(self.device):  # initialised where it runs: 428M parameters at full size
                model = CLIPModel(config)
            with quiet_transformers():
                model.to(torch.float16 if self.device.type == "cuda" else torch.float32).save_pretrained(path)
            del model
            start = time.perf_counter()
            self._encoder = load_clip(path, device=self.device)
            sync(self.device)
            params = sum(p.numel() for p in self._encoder.model.parameters()) / 1e6
            which = "ViT-L/14" if text is VIT_L14_TEXT else "tiny"
            dtype = str(self._encoder.model.dtype).removeprefix("torch.")
            self.report.add("preprocess", f"load_clip, {which} config ({params:.3g}M, {dtype}, files in page cache)",
                            load_s=time.perf_counter() - start)
        return self._encoder

    def pipeline(self) -> CLIPSonicPipeline:
        if self._pipeline is None:
            encoder = self.encoder()
            torch.manual_seed(0)
            unet = MelUNet.from_preset(self.sizes.unet, cond_dim=encoder.dim)
            randomize_zero_layers(unet)  # an untrained UNet outputs exact zeros
            self._pipeline = CLIPSonicPipeline(
                unet=unet.to(self.device), diffusion=DiffusionConfig(), encoder=encoder, mel=self.mel,
                clip=ClipModelRef(encoder.name, encoder.dim, encoder.fingerprint), dtype=self.dtype,
                vocoder=BigVGANVocoder.from_preset(self.sizes.vocoder, self.mel).to(self.device))
        return self._pipeline

    def preprocess(self) -> None:
        encoder, b, device = self.encoder(), self.sizes.clip_batch, self.device
        size = self.sizes.clip[1]["image_size"]
        pixels = torch.randn(b, 3, size, size, device=device, dtype=encoder.model.dtype)

        @torch.inference_mode()
        def model_only():
            return encoder.model.visual_projection(encoder.model.vision_model(pixel_values=pixels).pooler_output)

        where = f"{device.type}, {str(encoder.model.dtype).removeprefix('torch.')}"
        self.report.add("preprocess", f"CLIP images, model alone, batch {b} ({where})",
                        images_per_s=b / timed(model_only, device, self.sizes.repeats))
        frames = list(np.random.default_rng(0).integers(0, 256, (b, 240, 320, 3), dtype=np.uint8))
        seconds = timed(lambda: encoder.encode_images(frames, batch_size=b), device, self.sizes.repeats)
        self.report.add("preprocess", f"CLIP encode_images, 320x240 frames, batch {b} ({where})", images_per_s=b / seconds)
        wav = torch.randn(b, round(self.sizes.seconds * self.mel.sample_rate)) * 0.1
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one preprocess worker's share
        try:
            seconds = timed(lambda: mel_spectrogram(wav, self.mel), torch.device("cpu"), self.sizes.repeats)
        finally:
            torch.set_num_threads(threads)
        what = f"mel front end, {b} x {self.sizes.seconds:g} s"
        self.report.add("preprocess", f"{what} (cpu, 1 thread)", clips_per_s=b / seconds)
        if device.type == "cuda":
            wav = wav.to(device)
            seconds = timed(lambda: mel_spectrogram(wav, self.mel), device, self.sizes.repeats)
            self.report.add("preprocess", f"{what} (cuda)", clips_per_s=b / seconds)

    def _generate(self, section: str, steps: int, guidance_scale: float, label: str) -> None:
        pipe, device = self.pipeline(), self.device
        frames = self.frames(pipe.unet)
        passes = steps * (1 if guidance_scale == 1 else 2)
        for b in self.sizes.batches:
            def call(b=b):
                return pipe(text=PROMPT, num_samples=b, seconds=self.sizes.seconds, sampler=DEFAULT_SAMPLER,
                            num_inference_steps=steps, guidance_scale=guidance_scale, seed=0)

            seconds = timed(call, device, self.sizes.repeats)
            vocoder = time_vocoder(pipe.vocoder, b, frames, device, self.sizes.repeats)
            self.report.add(section, f"{label}, {frames} frames, B={b}", s_per_batch=seconds, s_per_clip=seconds / b,
                            vocoder_s_per_batch=vocoder, unet_passes_per_clip=passes)

    def generate(self) -> None:
        dtype = "bf16" if self.dtype is not None else "fp32"
        self._generate("generate", self.sizes.steps, DEFAULT_GUIDANCE_SCALE,
                       f"{DEFAULT_SAMPLER}-{self.sizes.steps} + CFG w={DEFAULT_GUIDANCE_SCALE:g} ({dtype}) "
                       f"+ BigVGAN {self.sizes.vocoder}")

    def distilled(self) -> None:
        self._generate("distilled", DISTILLED_STEPS, 1.0,
                       f"{DISTILLED_STEPS} one-pass steps (teacher at w=1: same cost) + BigVGAN {self.sizes.vocoder}")

    def train(self, compiled: bool = False) -> None:
        """The paper preset's training step in bf16 autocast (loss, backward, AdamW), eager or compiled."""
        device, b = self.device, self.sizes.train_batch
        self._encoder = self._pipeline = None  # the peak is the training step's alone
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        model = MelUNet.from_preset(self.sizes.unet).to(device).train()
        net = torch.compile(model, backend=self.sizes.compile_backend) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        diffusion = GaussianDiffusion(DiffusionConfig())
        x0 = torch.rand(b, 1, self.mel.n_mels, self.frames(model), device=device) * 2 - 1
        cond = torch.nn.functional.normalize(torch.randn(b, model.config.cond_dim, device=device), dim=1)
        gen = torch.Generator().manual_seed(0)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = diffusion.training_losses(net, x0, cond, generator=gen)["loss"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        seconds = timed(step, device, self.sizes.train_steps, warmup=self.sizes.train_warmup)
        label = f"torch.compile (backend {self.sizes.compile_backend})" if compiled else "eager"
        self.report.add("train-compile" if compiled else "train",
                        f"{self.sizes.unet} UNet, bf16 autocast, {label}, [{b}, 1, 64, {x0.shape[-1]}]",
                        samples_per_s=b / seconds, step_s=seconds, **peak_memory(device))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny sizes: checks the script in seconds")
    sections = ("preprocess", "generate", "distilled", "train", "train-compile")
    parser.add_argument("--sections", nargs="+", choices=sections, default=list(sections))
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    meta = {"device": name, "torch": torch.__version__, "tiny": args.tiny, "sizes": dataclasses.asdict(sizes),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    print(f"bench_gpu on {name} ({device.type}); torch {torch.__version__}; {'tiny' if args.tiny else 'full'} sizes: "
          f"{sizes.unet} UNet, {sizes.vocoder} BigVGAN, {sizes.seconds:g}-s clips; every row's median of "
          f"{sizes.repeats} timed call(s) after warm-up", flush=True)
    report = Report(args.out, meta)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(sizes, device, report, Path(tmp))
        runs = {"preprocess": bench.preprocess, "generate": bench.generate, "distilled": bench.distilled,
                "train": bench.train, "train-compile": lambda: bench.train(compiled=True)}
        for section in args.sections:
            try:
                runs[section]()
            except Exception as exc:  # one section's failure must not lose the others' rows
                report.fail(section, exc)
            except KeyboardInterrupt:  # gpu.sh's time limit (SIGINT): keep what was measured, say where it stopped
                report.fail(section, TimeoutError("stopped by the time limit (GPU_BENCH_SECONDS) or Ctrl-C"))
                break
    report.write()
    print(f"rows: {args.out / 'gpu.md'}, {args.out / 'gpu.json'}; failed: {sorted(report.errors) or 'none'}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
