"""Read a CTranslate2 ``model.bin`` without CTranslate2.

Layout (ctranslate2/specs/model_spec.py ``_serialize``, binary version 6): uint32 version, string
spec name, uint32 revision, uint32 variable count, then per variable: string name, uint8 rank,
rank x uint32 dims, uint8 dtype (``DataType`` enum order of include/ctranslate2/types.h), uint32
byte count, raw bytes; then uint32 alias count and (alias, target) string pairs. Strings are a
uint16 length that counts the trailing NUL, then the bytes. Everything is little-endian.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from slimwhisper.errors import UserError

# Order of the DataType enum in ctranslate2 (model_spec.py ``_dtype_to_type_id``). bfloat16 has
# no numpy dtype: read as uint16 and widened by ``_bf16_to_f32``.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BF16 = 5
SUPPORTED_VERSIONS = (5, 6)


class CT2FormatError(UserError, ValueError):
    """The file is not a complete CTranslate2 model (truncated, corrupt or an unknown version)."""


@dataclass
class CT2Model:
    spec_name: str
    revision: int
    version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases (e.g. the tied output projection)."""
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise CT2FormatError(f"alias loop at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        try:
            return self.variables[name]
        except KeyError:
            raise CT2FormatError(f"model.bin has no variable {name!r}") from None

    def float32(self, name: str) -> np.ndarray:
        """A variable as float32, undoing int8/int16 weight quantization.

        ctranslate2 quantizes ``w`` to ``rint(w * scale)`` and stores ``<name>_scale``: per output
        row for int8 (127 / row amax), one scalar for int16 (2**10 / amax) (specs/model_spec.py
        ``_quantize``), so ``w = q / scale``.
        """
        arr = self.get(name).astype(np.float32)
        scale_name = f"{name}_scale"
        if scale_name in self:
            scale = self.get(scale_name).astype(np.float32)
            arr = arr / scale.reshape(scale.shape + (1,) * (arr.ndim - scale.ndim))
        elif self.get(name).dtype.kind == "i":
            raise CT2FormatError(f"{name} is stored as {self.get(name).dtype} without {scale_name}")
        return arr

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases


class _Reader:
    def __init__(self, f: BinaryIO, path: Path):
        self.f, self.path = f, path

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CT2FormatError(
                f"{self.path} ends early (wanted {n} bytes at offset {self.f.tell() - len(data)}, "
                f"got {len(data)}): the file is truncated; re-copy or re-download it"
            )
        return data

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("H")
        raw = self.take(n)
        if n == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: malformed string at offset {self.f.tell() - n}")
        return raw[:-1].decode("utf-8")


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2(source: str | Path | bytes, label: str | None = None) -> CT2Model:
    """Parse every variable of a CTranslate2 ``model.bin`` (a path, or its bytes) into numpy arrays.

    Arrays keep the stored dtype (float16 for the bundled models); bfloat16 is widened to float32.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        path = Path(label or "model.bin")
        opened = io.BytesIO(source)
    else:
        path = Path(source)
        opened = open(path, "rb")  # noqa: SIM115 - closed by the with below
    with opened as f:
        r = _Reader(f, path)
        (version,) = r.unpack("I")
        if version not in SUPPORTED_VERSIONS:
            raise CT2FormatError(
                f"{path}: CTranslate2 binary version {version} is not supported (reads {SUPPORTED_VERSIONS})"
            )
        spec_name = r.string()
        (revision,) = r.unpack("I")
        (count,) = r.unpack("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = r.string()
            (rank,) = r.unpack("B")
            shape = r.unpack("I" * rank) if rank else ()
            (dtype_id,) = r.unpack("B")
            (nbytes,) = r.unpack("I")
            if dtype_id not in _DTYPES:
                raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
            dtype = _DTYPES[dtype_id]
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected:
                raise CT2FormatError(f"{path}: variable {name!r} {shape} has {nbytes} bytes, expected {expected}")
            arr = np.frombuffer(r.take(nbytes), dtype=dtype).reshape(shape)
            variables[name] = _bf16_to_f32(arr) if dtype_id == _BF16 else arr
        (n_alias,) = r.unpack("I")
        aliases = {}
        for _ in range(n_alias):
            alias = r.string()
            aliases[alias] = r.string()
        if f.read(1):
            raise CT2FormatError(f"{path}: trailing bytes after the alias table; the file is corrupt")
    return CT2Model(spec_name, revision, version, variables, aliases)
