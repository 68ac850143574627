"""A real CLIP tokenizer (byte-level BPE in OpenAI CLIP's file format), learned from a word list.

Every byte-level character is in the vocabulary bare and with CLIP's end-of-word ``</w>``, so any
text tokenizes; the listed words become single tokens. With :func:`write_clip_image_processor`, the
files make a folder :func:`clipsonic.encoders.load_clip` loads (the world-CLIP, the tests' tiny CLIP).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from clipsonic.files import write_bytes_atomic, write_json_atomic

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# OpenAI CLIP's pixel statistics; the world-CLIP keeps them so its processor is the stock one.
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:  # bytes without a printable glyph are shifted above U+00FF
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def pretokenize(text: str) -> list[str]:
    """Roughly CLIP's pre-tokenizer: lowercase; runs of letters, single digits, runs of other symbols."""
    return re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", text.lower())


def learn_bpe(words: Iterable[str]) -> list[tuple[str, str]]:
    """Greedy BPE training until every word is one symbol; returns the merges in rank order.

    Words are byte-level encoded and their last symbol carries ``</w>``, as CLIP's tokenizer sees
    them. Ties between equally frequent pairs break lexicographically so the result is deterministic.
    """
    byte_char = bytes_to_unicode()
    seqs = []
    for word in sorted(set(words)):
        symbols = [byte_char[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        seqs.append(symbols)
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for s in seqs for p in zip(s, s[1:], strict=False))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        seqs = [_merge(s, best) for s in seqs]


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def write_clip_tokenizer(directory: str | Path, texts: Sequence[str], *,
                         model_max_length: int = 77) -> dict[str, int]:
    """Write a CLIP tokenizer (``vocab.json``, ``merges.txt``, configs) learned from ``texts``' words.

    The vocabulary is laid out like OpenAI CLIP's: the 256 byte characters, the same with
    ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (the highest id,
    which CLIP's text model pools at). Returns the vocabulary (token -> id).
    """
    directory = Path(directory)
    merges = learn_bpe(w for text in texts for w in pretokenize(text))
    base = list(bytes_to_unicode().values())
    tokens = base + [c + END_OF_WORD for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    write_bytes_atomic(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    write_bytes_atomic(directory / "merges.txt", ("\n".join(lines) + "\n").encode("utf-8"))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    write_json_atomic(directory / "special_tokens_map.json", special)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "do_lower_case": True, "errors": "replace", **special}
    write_json_atomic(directory / "tokenizer_config.json", config)
    return vocab


def write_clip_image_processor(directory: str | Path, image_size: int) -> None:
    """``preprocessor_config.json`` of CLIP's image processor at ``image_size`` (resize short side, centre crop)."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,  # bicubic
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_IMAGE_MEAN),
        "image_std": list(CLIP_IMAGE_STD),
        "do_convert_rgb": True,
    }
    write_json_atomic(Path(directory) / "preprocessor_config.json", config)
