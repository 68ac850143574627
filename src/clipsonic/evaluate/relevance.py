"""Relevance accuracy: the fraction of clips an audio classifier labels as the clip's label. A classifier (e.g.
:class:`clipsonic.sonicworld.OracleClassifier`) has ``labels``, an optional ``name`` and ``classify(audio [B, samples]
float32, sample_rate) -> [label or None]`` (None counts as wrong). It judges the files a set wrote (cached audio stays
valid); clips without a label it knows are left out. Chance: ``1 / len(labels)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic.errors import ClipsonicError
from clipsonic.evaluate.testset import some_names
from clipsonic.media import load_audio


def classifier_name(classifier: Any) -> str:
    return str(getattr(classifier, "name", type(classifier).__name__))


def describe_classifier(classifier: Any) -> dict:
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
    hits: dict[str, list[bool]] = {}
    for guess, label in zip(predicted, labels, strict=True):
        hits.setdefault(label, []).append(guess is not None and guess == label)
    judged = [h for label_hits in hits.values() for h in label_hits]
    return Relevance(float(np.mean(judged)) if judged else None,
                     {label: float(np.mean(h)) for label, h in sorted(hits.items())}, len(judged))


def judge_files(classifier: Any, files: Sequence[Path], labels: Sequence[str], batch_size: int,
                sample_rate: int) -> Relevance:
    """Classify the audio ``files`` (read at ``sample_rate``, batches zero-padded to their longest file)."""
    predicted: list[str | None] = []
    for start in range(0, len(files), batch_size):
        wavs = [load_audio(p, sample_rate) for p in files[start:start + batch_size]]
        longest = max(len(w) for w in wavs)
        batch = np.stack([np.pad(w, (0, longest - len(w))) for w in wavs]).astype(np.float32)  # [B, samples]
        answers = list(classifier.classify(batch, sample_rate))
        if len(answers) != len(wavs):
            raise ClipsonicError(f"classifier {classifier_name(classifier)} answered {len(answers)} labels "
                                 f"for {len(wavs)} clips")
        predicted += answers
    return relevance_accuracy(predicted, labels)


def unknown_label_note(labels: Sequence[str | None], classifier: Any) -> str | None:
    """A note counting the labelled clips whose label the classifier does not know (left out)."""
    unknown = [label for label in labels if label and label not in set(classifier.labels)]
    return (f"{len(unknown)} clip(s) have label(s) the classifier {classifier_name(classifier)} does not know "
            f"({some_names(unknown)}): left out of relevance") if unknown else None
