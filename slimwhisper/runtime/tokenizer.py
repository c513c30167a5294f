"""Byte-level BPE *decoding* from a tokenizer.json (or .json.gz), without the ``tokenizers`` package.

Decoding ids is a vocabulary lookup followed by GPT-2's byte decoder (each of the 256 bytes is
mapped to a printable unicode character, ``bytes_to_unicode`` in openai/gpt-2 encoder.py).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenDecoder:
    """``decode(ids)`` -> text; ids at or above ``first_special`` (eot, task, language and
    timestamp tokens in Whisper's vocabulary) and added special tokens are skipped."""

    def __init__(self, tokenizer_json: str | Path, first_special: int):
        raw = Path(tokenizer_json).read_bytes()
        data = json.loads(gzip.decompress(raw) if str(tokenizer_json).endswith(".gz") else raw)  # bundles: .json.gz
        pieces: dict[int, str] = {int(i): tok for tok, i in data["model"]["vocab"].items()}
        self.special: set[int] = set()
        for added in data.get("added_tokens", []):
            pieces[int(added["id"])] = added["content"]
            if added.get("special", False):
                self.special.add(int(added["id"]))
        self.pieces = pieces
        self.first_special = first_special

    def decode(self, ids, skip_special: bool = True) -> str:
        table, out = byte_decoder(), bytearray()
        for i in ids:
            i = int(i)
            if skip_special and (i >= self.first_special or i in self.special):
                continue
            piece = self.pieces.get(i)
            if piece is None:
                raise KeyError(f"token id {i} is not in the bundle's tokenizer.json")
            if i in self.special or piece.startswith("<|"):
                out += piece.encode("utf-8")
            else:
                out += bytes(table[c] for c in piece)
        return out.decode("utf-8", errors="replace")
