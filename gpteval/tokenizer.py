"""Tokenizers: bytes for the bundled model, GPT-2 BPE through the `tokenizers` library."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError, first_line


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255: lossless for any text, no vocabulary file."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def n_bytes(self, ids) -> int:
        """UTF-8 bytes the ids encode (bits per byte of a scored prefix)."""
        return len(ids)

    def describe(self) -> dict:
        return {"kind": self.name, "vocab_size": self.vocab_size}


class BPETokenizer:
    """GPT-2 byte-level BPE from a local tokenizer.json or vocab.json + merges.txt."""

    name = "gpt2-bpe"

    def __init__(self, tok, source: str) -> None:
        self._tok = tok
        self.source = source
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def from_dir(cls, directory: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, pre_tokenizers
        from tokenizers.models import BPE

        d = Path(directory)
        tj, vocab, merges = d / "tokenizer.json", d / "vocab.json", d / "merges.txt"
        if tj.is_file():
            try:
                tok = Tokenizer.from_file(str(tj))
            except Exception as e:  # the library raises plain Exception on bad JSON
                raise UserError(f"{tj}: not a readable tokenizer.json ({first_line(e)}); "
                                "replace it with the model's original file") from None
            return cls(tok, str(tj))
        if vocab.is_file() and merges.is_file():
            try:
                json.loads(vocab.read_text(encoding="utf-8"))
                model = BPE.from_file(str(vocab), str(merges))
            except Exception as e:
                raise UserError(f"{vocab} / {merges}: unreadable BPE files ({first_line(e)}); "
                                "replace them with the model's original files") from None
            tok = Tokenizer(model)
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            return cls(tok, f"{vocab}+{merges}")
        raise UserError(f"{d}: no tokenizer found; add tokenizer.json, or vocab.json and "
                        "merges.txt, to the model directory")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def n_bytes(self, ids) -> int:
        """UTF-8 bytes the ids encode (bits per byte of a scored prefix); a prefix that cuts
        a character in two counts it as U+FFFD, at most 2 bytes over."""
        return len(self.decode(ids).encode("utf-8"))

    def describe(self) -> dict:
        return {"kind": self.name, "vocab_size": self.vocab_size, "source": self.source}

