"""``run_evaluation``: Table 1 and the guidance sweep of the paper for one model on one test split.

1. Read the test clips (labels, middle-frame CLIP embeddings, log-mels, real audio).
2. Write the reference set (the real audio) and the vocoder's reconstruction of the real mels.
3. Generate every (mode, w): IQ from the clip's frame embedding, the text modes from its label
   (through text_template, or a caption of the label from the captions file).
4. Embed every set (cached by file content), FAD against the reference, CLAP score vs the label,
   relevance (an audio classifier's accuracy on the label) when a classifier is given.
5. Write results.json, results.md and guidance_sweep.png.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clipsonic.data.dataset import read_dataset_info
from clipsonic.embedders import AudioEmbedder, TextAudioEmbedder, load_embedder
from clipsonic.evaluate.cache import EmbeddingCache, open_set_dir, write_manifest
from clipsonic.evaluate.captions import (
    Captions,
    captions_digest,
    load_captions,
    text_query,
    uncaptioned_note,
)
from clipsonic.evaluate.config import ALL_MODES, TEXT_MODES, EvalConfig
from clipsonic.evaluate.errors import EvaluationError
from clipsonic.evaluate.generator import Generator, load_generator
from clipsonic.evaluate.relevance import (
    AudioClassifier,
    describe_classifier,
    judge_files,
    load_classifier,
    unknown_label_note,
)
from clipsonic.evaluate.report import Evaluation, SetResult, set_names, write_report
from clipsonic.evaluate.testset import EvalClip, load_test_clips
from clipsonic.metrics import EmbeddingStats, MetricError, clap_score, fad_from_stats

log = logging.getLogger(__name__)

#: ``progress(done, total, what)`` after each unit of work
Progress = Callable[[int, int, str], None]


@dataclasses.dataclass
class _Counter:
    total: int
    callback: Progress | None
    done: int = 0

    def __call__(self, what: str, n: int = 1) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total, what)


def resolve_modes(requested: Sequence[str], supported: Sequence[str], clips: Sequence[EvalClip],
                  notes: list[str]) -> list[str]:
    """The modes to run: explicit ones must be supported; by default all the model supports."""
    if requested:
        missing = [m for m in requested if m not in supported]
        if missing:
            raise EvaluationError(f"the model cannot run mode(s) {missing} (it supports {', '.join(supported)}); "
                                  "pd needs a model exported with a prior")
        modes = list(dict.fromkeys(requested))
    else:
        modes = [m for m in ALL_MODES if m in supported]
        notes += [f"mode {m} skipped: the model does not support it" for m in ALL_MODES if m not in supported]
    if not any(c.label for c in clips):
        skipped = [m for m in modes if m in TEXT_MODES]
        if skipped:
            notes.append(f"the split has no labels: text modes {', '.join(skipped)} skipped, and no CLAP score")
        modes = [m for m in modes if m not in TEXT_MODES]
    elif not all(c.label for c in clips):
        notes.append(f"{sum(not c.label for c in clips)} clip(s) without a label are left out of the text modes "
                     "and of the CLAP score")
    if not modes:
        raise EvaluationError("no mode left to evaluate")
    return modes


def _save_one(path: Path, audio: np.ndarray, sample_rate: int, excluded: list[str]) -> float:
    """Write one clip's audio; returns the peak-limiting gain in dB. Non-finite audio is not
    written and its key is recorded."""
    from clipsonic.media import save_audio

    if not np.all(np.isfinite(audio)):
        log.warning("%s is NaN/inf; left out of the evaluation", path)
        excluded.append(path.stem)
        return 0.0
    return save_audio(path, audio, sample_rate, warn=False)


def _produce(folder: Path, settings: dict, clips: Sequence[EvalClip], make: Callable[[list[int]], list[np.ndarray]],
             batch_size: int, sample_rate: int, result: SetResult, tick: Callable[[str, int], None],
             queries: Sequence[str | None] | None = None) -> None:
    """Fill ``folder`` with the audio of every clip, calling ``make(indices)`` only for missing files.

    The manifest's query is ``queries[i]`` (the text a text mode generated from), else the label.
    """
    open_set_dir(folder, settings)
    todo = [i for i, c in enumerate(clips) if not (folder / f"{c.key}.wav").is_file()]
    tick(result.name, len(clips) - len(todo))
    gains = []
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        for i, wav in zip(batch, make(batch), strict=True):
            gains.append(_save_one(folder / f"{clips[i].key}.wav", np.asarray(wav, dtype=np.float32), sample_rate,
                                   result.excluded))
        tick(result.name, len(batch))
    limited = [g for g in gains if g > 0]
    if limited:  # one line per set, not one per file
        log.warning("%s: %d of %d clips peaked beyond [-1, 1] and were scaled down (up to %.1f dB) instead of clipped",
                    result.name, len(limited), len(gains), max(limited))
    shown = [(queries[i] if queries is not None else None) or c.label or "" for i, c in enumerate(clips)]
    write_manifest(folder, [{"file": f"{c.key}.wav", "item": c.key, "query": q}
                            for c, q in zip(clips, shown, strict=True) if (folder / f"{c.key}.wav").is_file()])


def _score(result: SetResult, folder: Path, clips: Sequence[EvalClip], reference: EmbeddingStats | None,
           fad_cache: EmbeddingCache, clap_cache: EmbeddingCache | None, clap_template: str,
           tick: Callable[[str, int], None]) -> EmbeddingStats:
    stats = EmbeddingStats(fad_cache.embedder.dim)
    texts, audio_emb = [], []
    for clip in clips:
        path = folder / f"{clip.key}.wav"
        if not path.is_file():
            continue
        stats.update(fad_cache.audio(path))
        result.clips += 1
        if clap_cache is not None and clip.label:
            texts.append(clap_template.format(label=clip.label))
            audio_emb.append(clap_cache.audio(path).mean(axis=0))
        tick(f"embed {result.name}", 1)
    result.embeddings = stats.count
    result.problems += stats.problems()
    if reference is not None:
        try:
            result.fad = fad_from_stats(reference, stats, warn=False)  # problems go to the report
        except MetricError as exc:
            result.problems.append(f"no FAD: {exc}")
    if texts:
        result.clap = clap_score(clap_cache.texts(texts), np.stack(audio_emb))
    return stats


def _embedders(config: EvalConfig) -> tuple[AudioEmbedder, TextAudioEmbedder | None]:
    weights = config.embedder_weights
    if config.embedder == "clap" and weights is None:  # --embedder clap --clap-weights X: one CLAP for both
        weights = config.clap_weights
    fad = load_embedder(config.embedder, weights, device=config.device)
    if isinstance(fad, TextAudioEmbedder) and config.clap_weights in (None, weights):
        return fad, fad
    clap = load_embedder("clap", config.clap_weights, device=config.device) if config.clap_weights else None
    return fad, clap  # type: ignore[return-value]


@dataclasses.dataclass
class _Run:
    """What every step of one evaluation shares."""

    out: Path
    config: EvalConfig
    gen: Generator
    clips: list[EvalClip]
    data: dict  # identifies the dataset's content: cached audio is reused only for the same
    fad_cache: EmbeddingCache
    clap_cache: EmbeddingCache | None
    tick: _Counter
    captions: Captions | None = None
    classifier: AudioClassifier | None = None
    folders: dict[str, Path] = dataclasses.field(default_factory=dict)

    def score(self, result: SetResult, clips: Sequence[EvalClip], reference: EmbeddingStats | None) -> EmbeddingStats:
        stats = _score(result, self.folders[result.name], clips, reference, self.fad_cache, self.clap_cache,
                       self.config.clap_template, self.tick)
        if self.classifier is not None:
            self.judge(result, clips)
        return stats

    def judge(self, result: SetResult, clips: Sequence[EvalClip]) -> None:
        """Relevance of the audio the set wrote, over its clips whose label the classifier knows."""
        folder, known = self.folders[result.name], set(self.classifier.labels)
        judged = [c for c in clips if c.label in known and (folder / f"{c.key}.wav").is_file()]
        rel = judge_files(self.classifier, [folder / f"{c.key}.wav" for c in judged], [c.label for c in judged],
                          self.config.batch_size)
        result.relevance, result.relevance_by_label, result.relevance_clips = rel.accuracy, rel.by_label, rel.clips


def _real_sets(run: _Run, sample_rate: int) -> tuple[list[SetResult], EmbeddingStats]:
    """The reference set (real audio, its statistics) and the vocoder's reconstruction of the real mels."""
    clips, batch = run.clips, run.config.batch_size
    reference = SetResult("reference", "reference", None)
    run.folders["reference"] = run.out / "audio" / "reference"
    _produce(run.folders["reference"], run.data, clips, lambda idx: [clips[i].audio for i in idx], batch,
             sample_rate, reference, run.tick)
    stats = run.score(reference, clips, None)
    recon = SetResult("reconstruction", "reconstruction", None)
    run.folders["reconstruction"] = run.out / "audio" / "reconstruction"
    _produce(run.folders["reconstruction"], {**run.gen.settings(), **run.data}, clips,
             lambda idx: run.gen.reconstruct([clips[i].logmel for i in idx]), batch, run.gen.sample_rate,
             recon, run.tick)
    return [reference, recon], stats


def _generated_sets(run: _Run, modes: Sequence[str]) -> list[SetResult]:
    """Audio for every (mode, w); clip i of the split always gets seed + i (common random numbers)."""
    results = []
    cfg = run.config
    for name, mode, w in set_names(modes, cfg.guidance_scales):
        result = SetResult(name, mode, w)
        subset = [c for c in run.clips if mode == "iq" or c.label]
        queries = [None if mode == "iq" else text_query(c, cfg.text_template, run.captions) for c in subset]
        settings = {**run.gen.settings(), **run.data, "mode": mode, "guidance": w, "seed": cfg.seed,
                    "text_template": cfg.text_template}
        if run.captions is not None and mode in TEXT_MODES:  # absent otherwise: earlier caches stay valid
            settings["captions"] = captions_digest(run.captions)
        run.tick(name, 2 * (len(run.clips) - len(subset)))

        def make(idx: list[int], mode=mode, w=w, subset=subset, queries=queries) -> list[np.ndarray]:
            picked = [subset[i] for i in idx]
            return run.gen.generate(mode, picked, [queries[i] for i in idx], w, [cfg.seed + c.index for c in picked])

        run.folders[name] = run.out / "audio" / mode / f"w{w:g}"
        _produce(run.folders[name], settings, subset, make, cfg.batch_size, run.gen.sample_rate, result, run.tick,
                 queries)
        results.append(result)
    return results


def run_evaluation(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   config: EvalConfig | None = None, *, generator: Generator | None = None,
                   classifier: AudioClassifier | None = None, progress: Progress | None = None) -> Evaluation:
    """Evaluate ``model_dir`` on ``data_dir``'s test split; writes everything under ``out_dir``.

    ``classifier`` (else ``config.classifier`` by name) adds the relevance column.
    """
    config = config or EvalConfig()
    notes: list[str] = []
    # 1. Inputs (a bad captions file or classifier is refused before any work)
    captions, classifier = _captions_and_classifier(config, classifier)
    info = read_dataset_info(data_dir)
    gen = generator or load_generator(model_dir, config)
    gen.check_dataset(info)
    clips = load_test_clips(info, config.split, config.num_clips)
    no_audio = [c.key for c in clips if c.audio is None]
    if no_audio:
        raise EvaluationError(f"{info.root}: {len(no_audio)} '{config.split}' clip(s) have no stored audio "
                              f"(e.g. {no_audio[0]}); FAD needs the real audio: re-run preprocess with --keep-audio")
    modes = resolve_modes(config.modes, gen.modes, clips, notes)
    notes += _query_notes(config, captions, clips, modes, classifier)
    if "iq" in modes and gen.describe().get("iq_condition"):
        notes.append(f"IQ conditions on the {gen.describe()['iq_condition']}")
    fad_embedder, clap_embedder = _embedders(config)
    if not fad_embedder.comparable:
        notes.append(f"FAD uses {fad_embedder.name}: a plumbing/sanity metric, NOT comparable with published FADs")
    out = Path(out_dir)
    data = {"dataset": str(info.root), "split": config.split,
            "dataset_json": hashlib.sha256((info.root / "dataset.json").read_bytes()).hexdigest()[:16]}
    n_sets = 2 + len(modes) * len(config.guidance_scales)
    run = _Run(out, config, gen, clips, data, EmbeddingCache(out / "embeddings", fad_embedder),
               EmbeddingCache(out / "embeddings", clap_embedder) if clap_embedder is not None else None,
               _Counter(total=len(clips) * 2 * n_sets, callback=progress), captions, classifier)

    # 2. Reference and reconstruction; 3. generations per (mode, w)
    results, ref_stats = _real_sets(run, info.mel.sample_rate)
    generated = _generated_sets(run, modes)
    # 4. Scores: every set against the reference statistics
    for result in results[1:] + generated:
        run.score(result, clips if result.mode in ("iq", "reconstruction") else [c for c in clips if c.label], ref_stats)
    log.info("embeddings: %d computed, %d from cache", run.fad_cache.misses, run.fad_cache.hits)
    problems: dict[str, list[str]] = {}
    for result in results + generated:
        for problem in result.problems:
            problems.setdefault(problem, []).append(result.name)
    for problem, names in problems.items():
        log.warning("%s: %s", ", ".join(names), problem)

    # 5. Report
    evaluation = Evaluation(
        config=config.to_dict(), model=gen.describe(),
        dataset={"path": str(info.root), "split": config.split, "clips": len(clips),
                 "split_clips": info.num_clips(config.split), "clip_model": info.clip.describe()},
        embedder=_describe(fad_embedder), clap=_describe(clap_embedder) if clap_embedder is not None else None,
        sets=results + generated, notes=notes,
        classifier=describe_classifier(classifier) if classifier is not None else None,
    )
    write_report(evaluation, out)
    return evaluation


def _captions_and_classifier(config: EvalConfig, classifier: AudioClassifier | None
                             ) -> tuple[Captions | None, AudioClassifier | None]:
    captions = load_captions(config.captions) if config.captions else None
    if classifier is None and config.classifier:
        classifier = load_classifier(config.classifier)
    if classifier is not None and not isinstance(classifier, AudioClassifier):
        raise TypeError(f"classifier {classifier!r} has no labels / classify(audio, sample_rate)")
    return captions, classifier


def _query_notes(config: EvalConfig, captions: Captions | None, clips: Sequence[EvalClip], modes: Sequence[str],
                 classifier: AudioClassifier | None) -> list[str]:
    """What the report must say about the text queries and the relevance column."""
    notes = []
    if captions is not None and any(m in TEXT_MODES for m in modes):
        notes.append(f"text modes query with captions from {config.captions} (clip i: caption i % n of its label)")
        missing = uncaptioned_note(clips, captions, str(config.captions))
        if missing:
            notes.append(missing)
    if classifier is not None:  # its chance level is in the report's header and results.json "classifier"
        unknown = unknown_label_note([c.label for c in clips], classifier)
        if unknown:
            notes.append(unknown)
    return notes


def _describe(embedder: AudioEmbedder) -> dict:
    return {"name": embedder.name, "cache_id": embedder.cache_id, "comparable": embedder.comparable,
            "description": embedder.description, "sample_rate": embedder.sample_rate, "dim": embedder.dim}
