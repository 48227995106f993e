"""The tiny models' byte-level BPE tokenizer, built locally (CLIP's format: ``vocab.json`` + ``merges.txt``).

The byte alphabet and end-of-word marks of CLIP's tokenizer, plus the merges of a few frequent English words,
so that prompts tokenize into short sequences; nothing is downloaded. Used by the tiny pipelines' text encoders
(:mod:`distri.models.tiny`) and the stand-in CLIP of the metrics (:mod:`distri.metrics.standins`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

# A few frequent English pieces, merged left to right; every merge joins two symbols that already exist.
MERGE_WORDS = (
    "the",
    "and",
    "of",
    "in",
    "on",
    "with",
    "at",
    "to",
    "is",
    "photo",
    "cat",
    "dog",
    "red",
    "blue",
    "sky",
    "city",
    "sunset",
    "painting",
    "street",
    "mountain",
    "water",
    "table",
    "man",
    "woman",
    "people",
    "sitting",
    "standing",
    "ing",
    "er",
    "es",
)


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes, in GPT-2/CLIP order (byte value order of
    the printable ranges first, then the remaining bytes mapped above U+0100)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    rest = [b for b in range(256) if b not in set(printable)]
    return [symbols[b] for b in printable + rest]


def tokenizer_files(words: Sequence[str] = MERGE_WORDS) -> tuple[dict[str, int], list[str]]:
    """Vocabulary (token -> id) and merge list of a byte-level BPE tokenizer merging ``words`` (default: the
    tiny models' :data:`MERGE_WORDS`)."""
    base = _bytes_to_unicode()
    tokens = base + [s + "</w>" for s in base]
    known = set(tokens)
    merges: list[str] = []
    for word in words:
        # Merge the word left to right: ((w o) r) d</w>; each step joins the current prefix with the next symbol.
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        prefix = symbols[0]
        for sym in symbols[1:]:
            merged = prefix + sym
            if merged not in known:
                merges.append(f"{prefix} {sym}")
                tokens.append(merged)
                known.add(merged)
            prefix = merged
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_tokenizer(workdir: Path, pad_token: str, words: Sequence[str] = MERGE_WORDS):
    """A ``CLIPTokenizer`` merging ``words``, its vocab.json and merges.txt written into ``workdir``."""
    from transformers import CLIPTokenizer

    vocab, merges = tokenizer_files(words)
    workdir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = workdir / "vocab.json", workdir / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(
        str(vocab_file),
        str(merges_file),
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=pad_token,
        model_max_length=MODEL_MAX_LENGTH,
    )
