"""StampWorld's assets: real recorded sound effects and real pictures from Tux Paint's stamps.

The Debian package ``tuxpaint-stamps-default`` (GPL-2; /usr/share/doc/tuxpaint-stamps-default/copyright)
installs, per stamp, a picture ``<name>.png`` (RGBA, transparent around the object) and for some stamps a
recorded sound effect ``<name>.ogg`` (44.1 kHz; ``*_desc*.ogg`` are spoken descriptions and are not used).
:data:`CONCEPTS` names, per concept, the recordings and the pictures of each split, relative to the stamps root.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from clipsonic.errors import ClipsonicError
from clipsonic.media import load_audio

DEFAULT_STAMPS = Path("/usr/share/tuxpaint/stamps")
STAMPS_ENV = "CLIPSONIC_STAMPS"  # overrides DEFAULT_STAMPS
PACKAGE = "tuxpaint-stamps-default"
LICENCE = "GPL-2"


@dataclasses.dataclass(frozen=True)
class StampConcept:
    """One thing of the world: its recordings, its pictures per split, and what people call it and its sound."""

    name: str  # file-name safe: videos are <name>_<i>.mp4
    nouns: tuple[str, ...]  # no noun is shared between concepts, so a caption alone picks the concept
    sounds: tuple[str, ...]  # sound words (participles)
    recordings: tuple[str, ...]  # .ogg paths, used in every split
    train_pictures: tuple[str, ...]  # shown in training videos and captioned pictures
    test_pictures: tuple[str, ...]  # shown only in test videos; () = none unseen, test videos reuse the train ones

    @property
    def unseen_picture(self) -> bool:
        """Whether its test videos show a picture no training video shows (a dingo for the dog)."""
        return bool(set(self.test_pictures) - set(self.train_pictures))

    def pictures(self, split: str) -> tuple[str, ...]:
        """The pictures a clip of ``split`` may show."""
        return (self.test_pictures or self.train_pictures) if split == "test" else self.train_pictures


def _concept(name: str, nouns: tuple[str, ...], sounds: tuple[str, ...], folder: str, recordings: tuple[str, ...],
             train: tuple[str, ...], test: tuple[str, ...] = ()) -> StampConcept:
    """A concept whose files all lie in ``folder`` (names without extension)."""
    def at(names: tuple[str, ...], ext: str) -> tuple[str, ...]:
        return tuple(f"{folder}/{n}.{ext}" for n in names)

    return StampConcept(name, nouns, sounds, at(recordings, "ogg"), at(train, "png"), at(test, "png"))


_MAMMALS, _BIRDS, _MUSIC = "animals/mammals", "animals/birds", "hobbies/music"
CONCEPTS: tuple[StampConcept, ...] = (
    _concept("dog", ("dog", "puppy", "hound"), ("barking", "woofing"), f"{_MAMMALS}/dogs", ("dog",),
             ("dog",), ("dingo",)),
    _concept("cow", ("cow", "calf", "heifer"), ("mooing", "lowing"), f"{_MAMMALS}/bovines", ("cow", "cow_white"),
             ("cow",), ("cow_white",)),
    _concept("sheep", ("sheep", "lamb", "ewe"), ("bleating", "baaing"), f"{_MAMMALS}/bovines",
             ("sheep", "sheep_lamb"), ("sheep",), ("sheep_lamb",)),
    _concept("pig", ("pig", "piglet", "hog"), ("oinking", "grunting"), _MAMMALS,
             ("pig", "pig_golden", "pig_golden2"), ("pig", "pig_golden"), ("pig_golden2",)),
    _concept("duck", ("duck", "drake", "mallard"), ("quacking", "chattering"), _BIRDS, ("duck", "drake"),
             ("duck",), ("drake",)),
    _concept("frog", ("frog", "toad", "bullfrog"), ("croaking", "ribbiting"), "animals/amphibians", ("frog",),
             ("frog",), ("frog-1",)),
    _concept("lion", ("lion", "lioness"), ("roaring", "rumbling"), f"{_MAMMALS}/cats", ("lion",), ("lion",),
             ("lion-2",)),
    _concept("tiger", ("tiger", "tigress"), ("growling", "snarling"), f"{_MAMMALS}/cats", ("tiger",), ("tiger",),
             ("tiger_sumatran",)),
    _concept("donkey", ("donkey", "mule", "burro"), ("braying", "hee-hawing"), f"{_MAMMALS}/equines", ("donkey",),
             ("donkey",), ("donkey_eating",)),
    _concept("goat", ("goat", "billy goat", "nanny goat"), ("maaing", "screaming"), f"{_MAMMALS}/bovines",
             ("goat", "mountaingoat"), ("goat",), ("mountaingoat",)),
    _concept("penguin", ("penguin", "little penguin"), ("squawking", "honking"), _BIRDS, ("penguin",),
             ("penguin", "magellanic_penguin"), ("little-penguin",)),
    _concept("hen", ("hen", "chicken", "pullet"), ("clucking", "cackling"), _BIRDS, ("hen",), ("hen",),
             ("chicken_profile",)),
    _concept("seagull", ("seagull", "gull", "herring gull"), ("screeching", "mewing"), _BIRDS, ("seagull",),
             ("seagull",), ("silver-gull",)),
    _concept("rooster", ("rooster", "cockerel", "cock"), ("crowing", "cock-a-doodling"), _BIRDS, ("rooster",),
             ("rooster",)),
    _concept("owl", ("owl", "owlet", "barn owl"), ("hooting", "whooing"), _BIRDS, ("owl",), ("owl",)),
    _concept("crow", ("crow", "raven", "rook"), ("cawing", "calling"), _BIRDS, ("crow",), ("crow",)),
    _concept("cuckoo", ("cuckoo", "cuckoo bird"), ("cuckooing", "singing"), _BIRDS, ("cuckoo",), ("cuckoo",)),
    _concept("elephant", ("elephant", "bull elephant", "pachyderm"), ("trumpeting", "bellowing"), _MAMMALS,
             ("elephant",), ("elephant",)),
    _concept("horse", ("horse", "pony", "stallion"), ("neighing", "whinnying"), f"{_MAMMALS}/equines", ("horse",),
             ("horse",)),
    _concept("cello", ("cello", "violoncello"), ("bowing", "droning"), f"{_MUSIC}/string", ("cello",), ("cello",)),
    _concept("violin", ("violin", "fiddle"), ("playing", "fiddling"), f"{_MUSIC}/string", ("violin",), ("violin",)),
    _concept("cymbal", ("cymbal", "crash cymbal"), ("crashing", "clashing"), f"{_MUSIC}/percussion",
             ("cymbal_crash",), ("cymbal_crash",)),
    _concept("fire_truck", ("fire truck", "fire engine"), ("wailing", "blaring"), "vehicles/emergency",
             ("firetruck",), ("firetruck",)),  # a 10-s stereo siren
    _concept("drum", ("drum", "drum kit", "tom-tom"), ("drumming", "booming"), f"{_MUSIC}/percussion",
             ("drumkit", "drum_tomtom_floor"), ("drumkit",), ("drum_tomtom_floor",)),
)
CONCEPT_NAMES = tuple(c.name for c in CONCEPTS)


def stamp_concept(which: StampConcept | int | str) -> StampConcept:
    """A concept by itself, its index, or its name."""
    if isinstance(which, StampConcept):
        return which
    if isinstance(which, str) and which in CONCEPT_NAMES:
        return CONCEPTS[CONCEPT_NAMES.index(which)]
    if isinstance(which, (int, np.integer)) and not isinstance(which, bool) and 0 <= which < len(CONCEPTS):
        return CONCEPTS[int(which)]
    raise ClipsonicError(f"unknown StampWorld concept {which!r}; use an index 0-{len(CONCEPTS) - 1} "
                         f"or one of {list(CONCEPT_NAMES)}")


def asset_paths() -> list[tuple[str, str, str, str]]:
    """Every asset of the table once: (relative path, kind "recording"/"picture", concept, split)."""
    rows = []
    for c in CONCEPTS:
        rows += [(rel, "recording", c.name, "train+test") for rel in c.recordings]
        rows += [(rel, "picture", c.name, "train" if c.test_pictures else "train+test") for rel in c.train_pictures]
        rows += [(rel, "picture", c.name, "test") for rel in c.test_pictures]
    return rows


def find_stamps(path: str | os.PathLike | None = None) -> Path:
    """The stamps root holding every asset of :data:`CONCEPTS`: ``path``, else $CLIPSONIC_STAMPS, else
    :data:`DEFAULT_STAMPS`. A missing file is a :class:`ClipsonicError` naming it and how to get the package."""
    where = Path(path if path is not None else os.environ.get(STAMPS_ENV) or DEFAULT_STAMPS).expanduser()
    for rel, _, _, _ in asset_paths():
        if not (where / rel).is_file():
            raise ClipsonicError(
                f"StampWorld needs the Tux Paint stamps in {where}, but {where / rel} is missing; "
                f"install them with `sudo apt-get install {PACKAGE}`, or without root `apt-get download {PACKAGE} "
                f"&& dpkg-deb -x {PACKAGE}_*.deb DIR` and pass --stamps DIR/usr/share/tuxpaint/stamps "
                f"(or set {STAMPS_ENV})")
    return where


@functools.lru_cache(maxsize=256)
def load_recording(stamps: Path, rel: str, sample_rate: int = 16000) -> np.ndarray:
    """A recording as float32 mono ``[N]`` at ``sample_rate`` (channels averaged, soxr-resampled).
    Cached per process (decoding dominates rendering): the array is read-only, copy it to change it."""
    audio = load_audio(Path(stamps) / rel, sample_rate)
    audio.setflags(write=False)
    return audio


@functools.lru_cache(maxsize=256)
def load_picture(stamps: Path, rel: str) -> Image.Image:
    """A stamp picture as a PIL RGBA image cropped to its visible pixels (alpha > 0). Cached per process:
    do not draw on it."""
    path = Path(stamps) / rel
    try:
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
    except OSError as exc:
        raise ClipsonicError(f"{path}: not a readable picture ({exc}); reinstall {PACKAGE}") from None
    box = rgba.getchannel("A").getbbox()
    if box is None:
        raise ClipsonicError(f"{path}: the picture is fully transparent; reinstall {PACKAGE}")
    return rgba.crop(box)


def asset_manifest(stamps: str | os.PathLike) -> list[dict]:
    """Provenance of every asset: path (relative to ``stamps``), kind, concept, split, package, licence, sha256,
    and for recordings their length in seconds."""
    stamps = Path(stamps)
    rows = []
    for rel, kind, name, split in asset_paths():
        path = stamps / rel
        row = {"path": rel, "kind": kind, "concept": name, "split": split, "package": PACKAGE,
               "licence": LICENCE, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        if kind == "recording":
            row["seconds"] = round(soundfile.info(str(path)).duration, 6)
        rows.append(row)
    return rows
