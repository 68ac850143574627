"""Relevance accuracy: the fraction of clips an audio classifier labels as the clip's label.

An :class:`AudioClassifier` judges the audio files a set wrote (generated, reference,
reconstruction); it only scores, so it never invalidates cached audio. Clips without a label, or
whose label the classifier does not know, are left out. Chance level is ``1 / len(labels)``.
Classifiers are external models: each one behind a lazy loader in :data:`CLASSIFIERS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from clipsonic.evaluate.errors import EvaluationError


@runtime_checkable
class AudioClassifier(Protocol):
    labels: Sequence[str]

    def classify(self, audio: np.ndarray, sample_rate: int) -> list[str | None]:
        """One label per clip of ``audio`` ``[B, samples]`` float32; None: no answer (counts as wrong)."""


class SonicWorldClassifier:
    """``clipsonic.sonicworld``'s oracle: it knows how every concept of the synthetic world sounds."""

    name = "sonicworld"

    def __init__(self) -> None:
        try:
            from clipsonic.sonicworld.oracle import OracleClassifier
            from clipsonic.sonicworld.world import CONCEPTS
        except ImportError as exc:
            raise EvaluationError(f"classifier 'sonicworld' needs clipsonic.sonicworld, which cannot be imported "
                                  f"({exc}); update clipsonic or pass another --classifier") from None
        self._oracle = OracleClassifier()
        mel_config = getattr(self._oracle, "mel_config", None)
        self.sample_rate = int(mel_config.sample_rate) if mel_config is not None else 16000  # it listens at this rate
        self.labels: tuple[str, ...] = tuple(c.name for c in CONCEPTS)

    def classify(self, audio: np.ndarray, sample_rate: int) -> list[str | None]:
        audio = np.asarray(audio, dtype=np.float32)  # [B, samples]
        if sample_rate != self.sample_rate:
            import soxr

            audio = np.stack([soxr.resample(a, sample_rate, self.sample_rate) for a in audio]).astype(np.float32)
        indices = np.asarray(self._oracle.classify_audio(audio, sample_rate=self.sample_rate)).reshape(-1)
        if len(indices) != len(audio):
            raise EvaluationError(f"the sonicworld oracle answered {len(indices)} labels for {len(audio)} clips")
        return [self.labels[i] if 0 <= i < len(self.labels) else None for i in indices.tolist()]


#: ``--classifier NAME`` → a loader (imports its model only when called)
CLASSIFIERS: dict[str, Callable[[], AudioClassifier]] = {"sonicworld": SonicWorldClassifier}


def load_classifier(name: str) -> AudioClassifier:
    """The classifier registered as ``name``."""
    if name not in CLASSIFIERS:
        raise EvaluationError(f"unknown classifier {name!r}; choose one of {', '.join(sorted(CLASSIFIERS))}")
    return CLASSIFIERS[name]()


def classifier_name(classifier: AudioClassifier) -> str:
    return str(getattr(classifier, "name", type(classifier).__name__))


def describe_classifier(classifier: AudioClassifier) -> dict:
    """For the report: name, number of labels and the chance level ``1 / len(labels)``."""
    n = len(classifier.labels)
    return {"name": classifier_name(classifier), "labels": n, "chance": 1.0 / n if n else None}


@dataclasses.dataclass
class Relevance:
    accuracy: float | None  # over every judged clip; None: no clip judged
    by_label: dict[str, float]  # accuracy per label, labels sorted
    clips: int  # clips judged


def relevance_accuracy(predicted: Sequence[str | None], labels: Sequence[str]) -> Relevance:
    """Fraction of ``predicted[i] == labels[i]``, overall and per label (None never matches)."""
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} predictions for {len(labels)} labels")
    hits: dict[str, list[bool]] = {}
    for guess, label in zip(predicted, labels, strict=True):
        hits.setdefault(label, []).append(guess is not None and guess == label)
    judged = [h for label_hits in hits.values() for h in label_hits]
    return Relevance(float(np.mean(judged)) if judged else None,
                     {label: float(np.mean(h)) for label, h in sorted(hits.items())}, len(judged))


def _read(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    wav, rate = soundfile.read(path, dtype="float32", always_2d=False)
    return (wav.mean(axis=1) if wav.ndim == 2 else wav), int(rate)


def judge_files(classifier: AudioClassifier, files: Sequence[Path], labels: Sequence[str],
                batch_size: int) -> Relevance:
    """Classify the audio ``files`` (batches of ``batch_size``) and score them against ``labels``.

    A batch is zero-padded to its longest file: a set's files are all the same length, so this
    only matters for a stray shorter file.
    """
    predicted: list[str | None] = []
    for start in range(0, len(files), batch_size):
        wavs, rates = zip(*(_read(p) for p in files[start:start + batch_size]), strict=True)
        if len(set(rates)) > 1:
            raise EvaluationError(f"{files[start].parent}: audio files at different sample rates {sorted(set(rates))}")
        batch = np.zeros((len(wavs), max(len(w) for w in wavs)), np.float32)  # [B, samples]
        for row, wav in zip(batch, wavs, strict=True):
            row[:len(wav)] = wav
        answers = list(classifier.classify(batch, rates[0]))
        if len(answers) != len(wavs):
            raise EvaluationError(f"classifier {classifier_name(classifier)} answered {len(answers)} labels "
                                  f"for {len(wavs)} clips")
        predicted += answers
    return relevance_accuracy(predicted, labels)


def unknown_label_note(labels: Sequence[str | None], classifier: AudioClassifier) -> str | None:
    """A note counting the labelled clips whose label the classifier does not know (left out)."""
    known = set(classifier.labels)
    unknown = [label for label in labels if label and label not in known]
    if not unknown:
        return None
    names = sorted(set(unknown))
    shown = ", ".join(repr(n) for n in names[:5]) + (", …" if len(names) > 5 else "")
    return (f"{len(unknown)} clip(s) have label(s) the classifier {classifier_name(classifier)} does not know "
            f"({shown}): left out of relevance")
