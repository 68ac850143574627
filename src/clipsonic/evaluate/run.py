"""``run_evaluation``: Table 1 and the guidance sweep of the paper. Every set of audio (real, the vocoder's
reconstruction, each generated (mode, w)) is written, embedded (cached by file content) and scored: FAD against
the real audio, CLAP score and relevance against the label; on a dataset with frame sequences, the IQ sets and the
reconstruction also get the sync measure (clipsonic.evaluate.sync): onset F1 against the real audio's onsets and the
audio-visual offset against the stored sequence's activity."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic.bridges import MODES, TEXT_MODES
from clipsonic.data.dataset import read_dataset_info
from clipsonic.embedders import AudioEmbedder, ClapEmbedder, load_embedder
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate.cache import EmbeddingCache, open_set_dir, record_wavs, verified_wavs
from clipsonic.evaluate.config import EvalConfig
from clipsonic.evaluate.generator import PipelineGenerator
from clipsonic.evaluate.relevance import describe_classifier, judge_files, unknown_label_note
from clipsonic.evaluate.report import Evaluation, SetResult, write_report
from clipsonic.evaluate.sync import SyncConfig, av_offset, detect_onsets, onset_envelope, onset_f1
from clipsonic.evaluate.testset import (
    Captions,
    EvalClip,
    captions_digest,
    load_captions,
    load_test_clips,
    text_query,
    uncaptioned_note,
)
from clipsonic.files import lock_folder
from clipsonic.listening.make import write_manifest
from clipsonic.media import load_audio, save_audio
from clipsonic.metrics import EmbeddingStats, clap_score, fad_from_stats

log = logging.getLogger(__name__)

#: ``progress(done, total, what)`` after each unit of work
Progress = Callable[[int, int, str], None]


def resolve_modes(requested: Sequence[str], supported: Sequence[str], clips: Sequence[EvalClip],
                  notes: list[str]) -> list[str]:
    """The modes to run: explicit ones must be supported; by default all the model supports."""
    if requested:
        missing = [m for m in requested if m not in supported]
        if missing:
            raise ClipsonicError(f"the model cannot run mode(s) {missing} (it supports {', '.join(supported)}); "
                                 "pd needs a model exported with a prior")
        modes = list(dict.fromkeys(requested))
    else:
        modes = [m for m in MODES if m in supported]
        notes += [f"mode {m} skipped: the model does not support it" for m in MODES if m not in supported]
    if not any(c.label for c in clips):
        skipped = [m for m in modes if m in TEXT_MODES]
        if skipped:
            notes.append(f"the split has no labels: text modes {', '.join(skipped)} skipped, and no CLAP score")
        modes = [m for m in modes if m not in TEXT_MODES]
    elif not all(c.label for c in clips):
        notes.append(f"{sum(not c.label for c in clips)} clip(s) without a label are left out of the text modes "
                     "and of the CLAP score")
    if not modes:
        raise ClipsonicError("no mode left to evaluate")
    return modes


def _embedders(config: EvalConfig) -> tuple[AudioEmbedder, ClapEmbedder | None]:
    weights = config.embedder_weights
    if config.embedder == "clap" and weights is None:  # --embedder clap --clap-weights X: one CLAP for both
        weights = config.clap_weights
    fad = load_embedder(config.embedder, weights, device=config.device)
    if isinstance(fad, ClapEmbedder) and config.clap_weights in (None, weights):
        return fad, fad
    clap = load_embedder("clap", config.clap_weights, device=config.device) if config.clap_weights else None
    return fad, clap  # type: ignore[return-value]


@dataclasses.dataclass
class _Run:
    """What every step of one evaluation shares. Set ``name`` writes its audio to ``out/audio/name``."""

    out: Path
    config: EvalConfig
    gen: PipelineGenerator
    clips: list[EvalClip]
    data: dict  # identifies the dataset's content: cached audio is reused only for the same
    fad_cache: EmbeddingCache
    clap_cache: EmbeddingCache | None
    captions: Captions | None
    classifier: Any  # see clipsonic.evaluate.relevance; None: no relevance column
    progress: Progress | None
    total: int  # units of work: two per clip and set (write, embed)
    done: int = 0

    def tick(self, what: str, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total, what)

    def produce(self, result: SetResult, settings: dict, clips: Sequence[EvalClip],
                make: Callable[[list[int]], list[np.ndarray]], queries: Sequence[str | None] | None = None) -> None:
        """Fill the set's folder with every clip's audio, calling ``make(indices)`` only for missing files;
        non-finite audio is not written (``result.excluded``). The manifest's query: ``queries[i]``, else the label."""
        folder = self.out / "audio" / result.name
        open_set_dir(folder, settings)
        cached = verified_wavs(folder)
        todo = [i for i, c in enumerate(clips) if f"{c.key}.wav" not in cached]
        self.tick(result.name, len(clips) - len(todo))
        gains = []
        for start in range(0, len(todo), self.config.batch_size):
            batch, written = todo[start:start + self.config.batch_size], []
            for i, wav in zip(batch, make(batch), strict=True):
                path, wav = folder / f"{clips[i].key}.wav", np.asarray(wav, dtype=np.float32)
                if np.all(np.isfinite(wav)):
                    gains.append(save_audio(path, wav, self.gen.sample_rate, warn=False))
                    written.append(path)
                else:
                    log.warning("%s is NaN/inf; left out of the evaluation", path)
                    result.excluded.append(path.stem)
            record_wavs(folder, written)
            self.tick(result.name, len(batch))
        limited = [g for g in gains if g > 0]
        if limited:  # one line per set, not one per file
            log.warning("%s: %d of %d clips peaked beyond [-1, 1] and were scaled down (up to %.1f dB) instead of "
                        "clipped", result.name, len(limited), len(gains), max(limited))
        shown = [(queries[i] if queries is not None else None) or c.label or "" for i, c in enumerate(clips)]
        write_manifest(folder, [{"file": f"{c.key}.wav", "item": c.key, "query": q}
                                for c, q in zip(clips, shown, strict=True) if (folder / f"{c.key}.wav").is_file()])

    def score(self, result: SetResult, clips: Sequence[EvalClip], reference: EmbeddingStats | None) -> EmbeddingStats:
        """FAD against ``reference``, CLAP score against the label, relevance: of the audio the set wrote."""
        folder = self.out / "audio" / result.name
        written = [c for c in clips if (folder / f"{c.key}.wav").is_file()]
        stats = EmbeddingStats(self.fad_cache.embedder.dim)
        texts, audio_emb = [], []
        for clip in written:
            stats.update(self.fad_cache.audio(folder / f"{clip.key}.wav"))
            if self.clap_cache is not None and clip.label:
                texts.append(self.config.clap_template.format(label=clip.label))
                audio_emb.append(self.clap_cache.audio(folder / f"{clip.key}.wav").mean(axis=0))
            self.tick(f"embed {result.name}", 1)
        result.clips, result.embeddings = len(written), stats.count
        result.problems += stats.problems()
        if reference is not None:
            try:
                result.fad = fad_from_stats(reference, stats, warn=False)  # problems go to the report
            except ClipsonicError as exc:
                result.problems.append(f"no FAD: {exc}")
        if texts:
            result.clap = clap_score(self.clap_cache.texts(texts), np.stack(audio_emb))
        if self.classifier is not None:  # the clips whose label the classifier knows
            judged = [c for c in written if c.label in set(self.classifier.labels)]
            rel = judge_files(self.classifier, [folder / f"{c.key}.wav" for c in judged], [c.label for c in judged],
                              self.config.batch_size, self.gen.sample_rate)
            result.relevance, result.relevance_by_label, result.relevance_clips = rel.accuracy, rel.by_label, rel.clips
        return stats


def _generated_sets(run: _Run, modes: Sequence[str]) -> list[SetResult]:
    """Audio for every (mode, w); clip i of the split always gets seed + i (common random numbers)."""
    results, cfg = [], run.config
    for mode in modes:
        subset = [c for c in run.clips if mode == "iq" or c.label]
        queries = [None if mode == "iq" else text_query(c, cfg.text_template, run.captions) for c in subset]
        for w in cfg.guidance_scales:
            result = SetResult(f"{mode}/w{w:g}", mode, w)
            settings = {**run.gen.settings(), **run.data, "mode": mode, "guidance": w, "seed": cfg.seed,
                        "text_template": cfg.text_template}
            if run.captions is not None and mode in TEXT_MODES:  # absent otherwise: earlier caches stay valid
                settings["captions"] = captions_digest(run.captions)
            run.tick(result.name, 2 * (len(run.clips) - len(subset)))

            def make(idx: list[int], mode=mode, w=w, subset=subset, queries=queries) -> list[np.ndarray]:
                picked = [subset[i] for i in idx]
                return run.gen.generate(mode, picked, [queries[i] for i in idx], w, [cfg.seed + c.index for c in picked])

            run.produce(result, settings, subset, make, queries)
            results.append(result)
    return results


def sequence_activity(sequence: np.ndarray) -> np.ndarray:
    """How much the picture changes at each stored frame: 1 − cosine between frame embeddings ``[N, D]`` and the
    previous one (the first: 0), ``[N]``, the visual activity of the sync measure."""
    unit = sequence / np.maximum(np.linalg.norm(sequence, axis=1, keepdims=True), 1e-8)
    return np.concatenate([[0.0], 1.0 - (unit[1:] * unit[:-1]).sum(axis=1)])


def _sync_sets(run: _Run, sets: Sequence[SetResult], frame_rate: float, real_rate: int, notes: list[str]) -> None:
    """The sync measure of the IQ sets and the reconstruction, against the real audio's onsets; its note."""
    sync = SyncConfig()
    notes.append(f"sync: onset F1 of each clip's onsets against the real audio's within ±{sync.tolerance_s:g} s (mean "
                 f"over clips); AV offset: mean |lag| within ±{sync.max_lag_s:g} s that best correlates the onset "
                 "envelope with the visual activity, 1 − cosine between consecutive stored frame embeddings at the "
                 f"dataset's {frame_rate:g} fps")
    real = {c.key: detect_onsets(*onset_envelope(c.audio, real_rate), sync) for c in run.clips}
    for result in sets:
        if result.mode in ("iq", "reconstruction"):
            _score_sync(run, result, real, notes)


def _score_sync(run: _Run, result: SetResult, reference: dict[str, np.ndarray], notes: list[str]) -> None:
    """``result.onset_f1`` (mean over clips; onsets within ± tolerance_s of ``reference[key]``, the real audio's)
    and ``result.av_offset_s`` (mean |offset| of the onset envelope against :func:`sequence_activity`)."""
    config, folder, rate = SyncConfig(), run.out / "audio" / result.name, run.gen.sample_rate
    f1s, offsets, problem = [], [], None
    for clip in run.clips:
        if not (folder / f"{clip.key}.wav").is_file():
            continue
        envelope, envelope_rate = onset_envelope(load_audio(folder / f"{clip.key}.wav", rate), rate)
        f1s.append(onset_f1(detect_onsets(envelope, envelope_rate, config), reference[clip.key],
                            config.tolerance_s)["f1"])
        fps = len(clip.sequence) / run.gen.seconds  # N frames over the clip: the stored sequence's exact rate
        try:
            offsets.append(abs(av_offset(envelope, envelope_rate, sequence_activity(clip.sequence), fps,
                                         config.max_lag_s)[0]))
        except ClipsonicError as exc:  # a clip too short for the lag window: its onset F1 still counts
            problem = f"{result.name}: no audio-visual offset: {exc}"
    notes += [problem] if problem else []
    result.onset_f1 = float(np.mean(f1s)) if f1s else None
    result.av_offset_s = float(np.mean(offsets)) if offsets and not problem else None


def run_evaluation(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   config: EvalConfig | None = None, *, generator: PipelineGenerator | None = None,
                   classifier: Any = None, progress: Progress | None = None) -> Evaluation:
    """Evaluate ``model_dir`` on ``data_dir``'s test split into ``out_dir``; ``classifier`` (see
    :mod:`clipsonic.evaluate.relevance`) adds the relevance column. ``out_dir`` is locked while it runs."""
    with lock_folder(out_dir, "evaluate"):
        return _evaluate(Path(model_dir), Path(data_dir), Path(out_dir), config or EvalConfig(), generator,
                         classifier, progress)


def _evaluate(model_dir: Path, data_dir: Path, out: Path, config: EvalConfig, generator: PipelineGenerator | None,
              classifier: Any, progress: Progress | None) -> Evaluation:
    notes: list[str] = []
    # 1. Inputs (a bad captions file is refused before any work)
    captions = load_captions(config.captions) if config.captions else None
    info = read_dataset_info(data_dir)
    gen = generator or PipelineGenerator(model_dir, config)
    gen.check_dataset(info)
    clips = load_test_clips(info, config.split, config.num_clips)
    no_audio = [c.key for c in clips if c.audio is None]
    if no_audio:
        raise ClipsonicError(f"{info.root}: {len(no_audio)} '{config.split}' clip(s) have no stored audio "
                             f"(e.g. {no_audio[0]}); FAD needs the real audio: re-run preprocess with --keep-audio")
    modes = resolve_modes(config.modes, gen.modes, clips, notes)
    if captions is not None and any(m in TEXT_MODES for m in modes):
        notes.append(f"text modes query with captions from {config.captions} (clip i: caption i % n of its label)")
        notes.append(uncaptioned_note(clips, captions, str(config.captions)))
    if classifier is not None:  # its chance level is in the report's header and results.json "classifier"
        notes.append(unknown_label_note([c.label for c in clips], classifier))
    if "iq" in modes:
        notes.append(f"IQ conditions on the {gen.describe()['iq_condition']}")
    fad_embedder, clap_embedder = _embedders(config)
    if not fad_embedder.comparable:
        notes.append(f"FAD uses {fad_embedder.name}: a plumbing/sanity metric, NOT comparable with published FADs")
    data = {"dataset": str(info.root), "split": config.split,
            "dataset_json": hashlib.sha256((info.root / "dataset.json").read_bytes()).hexdigest()[:16]}
    run = _Run(out, config, gen, clips, data, EmbeddingCache(out / "embeddings", fad_embedder),
               EmbeddingCache(out / "embeddings", clap_embedder) if clap_embedder is not None else None,
               captions, classifier, progress, total=len(clips) * 2 * (2 + len(modes) * len(config.guidance_scales)))

    # 2. The real audio (the reference set, its statistics) and the vocoder's reconstruction of the real mels
    reference, recon = SetResult("reference", "reference", None), SetResult("reconstruction", "reconstruction", None)
    run.produce(reference, data, clips, lambda idx: [clips[i].audio for i in idx])
    ref_stats = run.score(reference, clips, None)
    run.produce(recon, {**gen.settings(), **data}, clips,
                lambda idx: gen.reconstruct([clips[i].logmel for i in idx]))
    # 3. Generations per (mode, w)
    generated = _generated_sets(run, modes)
    # 4. Scores: every set against the reference statistics
    for result in [recon, *generated]:
        run.score(result, clips if result.mode in ("iq", "reconstruction") else [c for c in clips if c.label], ref_stats)
    log.info("embeddings: %d computed, %d from cache", run.fad_cache.misses, run.fad_cache.hits)
    if info.frame_rate is not None and all(c.sequence is not None for c in clips):
        _sync_sets(run, [recon, *generated], info.frame_rate, info.mel.sample_rate, notes)

    # 5. Report
    evaluation = Evaluation(
        config=config.to_dict(), model=gen.describe(),
        dataset={"path": str(info.root), "split": config.split, "clips": len(clips),
                 "split_clips": info.num_clips(config.split), "clip_model": info.clip.describe()},
        embedder=fad_embedder.describe(), clap=clap_embedder.describe() if clap_embedder is not None else None,
        sets=[reference, recon, *generated], notes=[n for n in notes if n],
        classifier=describe_classifier(classifier) if classifier is not None else None,
    )
    for problem, names in evaluation.problems().items():
        log.warning("%s: %s", ", ".join(names), problem)
    write_report(evaluation, out)
    return evaluation
