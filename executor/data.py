"""Training data: deterministic synthetic tokens, or windows of a real text file.

Every sequence is drawn from its own generator seeded by (seed, step, index in the global batch), so
a data-parallel rank produces only its own rows and any layout sees exactly the batch a single
process sees, which is what the numerics tests compare.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from executor.errors import UnsupportedPlan
from planner.errors import InputFileError

MAX_TEXT_BYTES = 256 * 2**20


def _generator(seed: int, step: int, row: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{step}:{row}".encode()) & 0x7FFFFFFF)


class Tokenizer:
    """Byte-level (256 ids) or character-level (the file's distinct characters, sorted)."""

    def __init__(self, kind: str, text: str) -> None:
        self.kind = kind
        self.chars = sorted(set(text)) if kind == "char" else []
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return 256 if self.kind == "byte" else len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        if self.kind == "byte":
            return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        if self.kind == "byte":
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids if i < len(self.chars))


class SyntheticData:
    """Uniform random tokens (the loss stays near ln V: it measures speed, not learning)."""

    def __init__(self, vocab_size: int, seq_len: int, seed: int) -> None:
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

    def rows(self, step: int, start: int, count: int) -> torch.Tensor:
        """Rows start..start+count of the global batch of `step`: (count, seq_len + 1) token ids."""
        out = torch.empty(count, self.seq_len + 1, dtype=torch.long)
        for j in range(count):
            g = _generator(self.seed, step, start + j)
            out[j] = torch.randint(0, self.vocab_size, (self.seq_len + 1,), generator=g)
        return out


class TextData:
    """Random windows of a tokenised text file."""

    def __init__(self, path: str | Path, vocab_size: int, seq_len: int, seed: int,
                 tokenizer: str = "auto") -> None:
        p = Path(path)
        try:
            if p.stat().st_size > MAX_TEXT_BYTES:
                raise InputFileError(f"{p}: larger than {MAX_TEXT_BYTES // 2**20} MiB")
            raw = p.read_bytes()
        except OSError as exc:
            raise InputFileError(f"{p}: cannot read ({exc.strerror or exc})") from None
        try:  # a binary file is refused, not trained on as replacement characters
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputFileError(f"{p}: not UTF-8 text (byte {exc.start:,} is 0x{raw[exc.start]:02x}); --data "
                                 f"takes a text file") from None
        if "\x00" in text:
            raise InputFileError(f"{p}: not text (NUL byte at offset {raw.index(0):,}); --data takes a text file")
        if not text:
            raise InputFileError(f"{p}: the file is empty (no text to train on)")
        if tokenizer == "auto":
            tokenizer = "byte" if vocab_size >= 256 else "char"
        if tokenizer not in ("byte", "char"):
            raise UnsupportedPlan(f"unknown tokenizer {tokenizer!r} (byte or char)", field="tokenizer")
        self.tokenizer = Tokenizer(tokenizer, text)
        if self.tokenizer.vocab_size > vocab_size:
            need = self.tokenizer.vocab_size
            raise UnsupportedPlan(f"{p.name}: the {tokenizer} tokenizer needs {need} ids but the model's "
                                  f"vocab_size is {vocab_size}", field="data")
        self.tokens = self.tokenizer.encode(text)
        if len(self.tokens) < seq_len + 2:
            raise InputFileError(f"{p}: {len(self.tokens)} tokens is shorter than one sequence "
                                 f"({seq_len + 1} tokens)")
        self.seq_len, self.seed = seq_len, seed

    def rows(self, step: int, start: int, count: int) -> torch.Tensor:
        out = torch.empty(count, self.seq_len + 1, dtype=torch.long)
        span = len(self.tokens) - self.seq_len - 1
        for j in range(count):
            g = _generator(self.seed, step, start + j)
            i = int(torch.randint(0, span + 1, (1,), generator=g))
            out[j] = self.tokens[i:i + self.seq_len + 1]
        return out


def make_data(path: str | None, vocab_size: int, seq_len: int, seed: int,
              tokenizer: str = "auto") -> SyntheticData | TextData:
    if path:
        return TextData(path, vocab_size, seq_len, seed, tokenizer)
    return SyntheticData(vocab_size, seq_len, seed)
