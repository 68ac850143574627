"""Loading vocoder directories, attaching one to a pipeline, and vocoding a file.

Layout of a vocoder directory (what :meth:`Vocoder.save_pretrained` and ``train-vocoder``
write, and what a pipeline keeps as ``vocoder/``)::

    config.json                      {"type": "bigvgan" | "griffin-lim", "mel": {...}, ...}
    bigvgan_generator.safetensors    (BigVGAN only; weight norm already removed)

A training run directory (``train-vocoder --out RUN``) holds its inference directory at
``RUN/vocoder/``; every function here accepts either.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.files import atomic_directory, write_json_atomic
from clipsonic.vocoder.base import CONFIG_NAME, Vocoder, VocoderError
from clipsonic.vocoder.bigvgan import BigVGANVocoder
from clipsonic.vocoder.griffinlim import GriffinLimVocoder

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"


def resolve_vocoder_dir(path: str | os.PathLike) -> Path:
    """The inference directory for ``path``: itself, or ``path/vocoder`` for a training run."""
    path = Path(path)
    for candidate in (path, path / "vocoder"):
        if (candidate / CONFIG_NAME).is_file() and "type" in _read_json(candidate / CONFIG_NAME):
            return candidate
    if not path.exists():
        raise VocoderError(f"{path}: no such vocoder directory")
    raise VocoderError(
        f"{path} is not a vocoder directory (no config.json with a \"type\" here or in {path / 'vocoder'}); "
        "train one with `clipsonic train-vocoder` or save one with Vocoder.save_pretrained"
    )


def load_vocoder(path: str | os.PathLike, *, device: str | torch.device | None = None,
                 mel_config: MelConfig | None = None) -> Vocoder:
    """Load a vocoder directory (or a training run's ``vocoder/``) without running its code.

    With ``mel_config``, refuse a vocoder built for other mels (:class:`VocoderError`).
    """
    directory = resolve_vocoder_dir(path)
    source = str(directory / CONFIG_NAME)
    data = _read_json(directory / CONFIG_NAME)
    kind = data.get("type")
    if "mel" not in data:
        raise VocoderError(f"{source}: no \"mel\" entry; re-export the vocoder")
    if kind == BigVGANVocoder.type_name:
        vocoder: Vocoder = BigVGANVocoder.from_config_dict(data, directory, source=source)
    elif kind == GriffinLimVocoder.type_name:
        vocoder = GriffinLimVocoder.from_config_dict(data, source=source)
    else:
        raise VocoderError(f"{source}: unknown vocoder type {kind!r} (this clipsonic knows 'bigvgan', 'griffin-lim')")
    if mel_config is not None:
        vocoder.check_compatible(mel_config)
    if device is not None:
        vocoder.to(device)
    return vocoder


def attach_vocoder(pipeline_dir: str | os.PathLike, vocoder_dir: str | os.PathLike) -> Path:
    """Copy a vocoder into ``pipeline_dir/vocoder/`` (copy to a temporary folder, then rename).

    The pipeline must exist and have ``model_index.json``; when that names a mel config the
    vocoder must match it, and its component list is pointed at ``vocoder/``.
    Returns the new component directory.
    """
    pipeline_dir = Path(pipeline_dir)
    index_path = pipeline_dir / MODEL_INDEX
    if not index_path.is_file():
        raise VocoderError(f"{pipeline_dir} is not a pipeline directory (no {MODEL_INDEX}); export a trained model first")
    source = resolve_vocoder_dir(vocoder_dir)
    vocoder = load_vocoder(source)  # validates config and weights before anything is replaced
    index = _read_json(index_path)
    if isinstance(index.get("mel"), dict):
        vocoder.check_compatible(MelConfig.from_dict(index["mel"], source=f"{index_path}:mel"), what=str(pipeline_dir))
    target = pipeline_dir / "vocoder"
    with atomic_directory(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    if _point_index_at_vocoder(index):
        write_json_atomic(index_path, index)
    log.info("attached %s vocoder from %s to %s", vocoder.type_name, source, target)
    return target


def _point_index_at_vocoder(index: dict) -> bool:
    """Make ``model_index.json`` name the ``vocoder/`` folder; True when it changed.

    clipsonic's pipelines list components as ``"components": {"vocoder": "vocoder" | null}``
    (null = fall back to Griffin-Lim); a diffusers-style top-level ``"vocoder"`` entry is kept
    pointing at the same folder when one is there.
    """
    changed = False
    if isinstance(index.get("components"), dict) and index["components"].get("vocoder") != "vocoder":
        index["components"]["vocoder"] = "vocoder"
        changed = True
    if "vocoder" in index and index["vocoder"] != "vocoder":
        index["vocoder"] = "vocoder"
        changed = True
    return changed


def vocode_file(input_path: str | os.PathLike, output_path: str | os.PathLike, vocoder: Vocoder,
                start: float | None = None, duration: float | None = None) -> float:
    """Audio/video file → log-mel → ``vocoder`` → audio file; returns the written seconds.

    The output has ``frames * hop`` samples: the input length rounded down to whole hops.
    """
    from clipsonic.vocoder.audio_io import load_audio, save_audio

    mel = vocoder.mel_config
    audio = load_audio(input_path, sample_rate=mel.sample_rate, start=start, duration=duration)
    if audio.shape[-1] <= mel.n_fft // 2:
        raise VocoderError(f"{input_path}: only {audio.shape[-1]} samples of audio; need more than {mel.n_fft // 2}")
    wav = torch.from_numpy(audio).float()
    frames = audio.shape[-1] // mel.hop_length  # whole hops only: frame t covers [t*hop, (t+1)*hop)
    logmel = mel_spectrogram(wav[: frames * mel.hop_length], mel)
    out = vocoder(logmel.to(vocoder.device)).cpu().numpy()
    save_audio(output_path, out, mel.sample_rate)
    return out.shape[-1] / mel.sample_rate


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VocoderError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise VocoderError(f"{path}: expected a JSON object")
    return data
