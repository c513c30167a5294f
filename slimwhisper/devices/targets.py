"""What an estimate is about: the ArchSpec and precision of a bundle, a pruned folder or a dense name.

No torch and nothing loaded: a bundle's ``manifest.json`` and a pruned folder's ``slimwhisper.json``
hold the spec; dense OpenAI checkpoints are described by their published dimensions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slimwhisper.devices.profile import DeviceError
from slimwhisper.spec import ArchSpec

# openai/whisper ModelDimensions stored in each checkpoint (n_audio_state, heads, layers; FFN = 4 x
# width; n_vocab 51865 multilingual, 51864 English-only; n_audio_ctx 1500, n_text_ctx 448, 80 mels).
DENSE_DIMS = {"tiny": (384, 6, 4), "base": (512, 8, 6), "small": (768, 12, 12), "medium": (1024, 16, 24)}


def dense_spec(name: str) -> ArchSpec:
    size = name.removesuffix(".en")
    if size not in DENSE_DIMS:
        raise DeviceError(f"unknown dense model {name!r}; estimate one of "
                          f"{', '.join(sorted([*DENSE_DIMS, *(k + '.en' for k in DENSE_DIMS)]))}, a bundle or a pruned folder")
    d, heads, layers = DENSE_DIMS[size]
    return ArchSpec.dense(d_model=d, n_mels=80, vocab=51864 if name.endswith(".en") else 51865, n_audio_ctx=1500,
                          n_text_ctx=448, encoder_layers=layers, decoder_layers=layers, encoder_heads=heads,
                          decoder_heads=heads, encoder_ffn=4 * d, decoder_ffn=4 * d)


@dataclass(frozen=True)
class SpecTarget:
    source: str
    label: str
    spec: ArchSpec
    precision: str  # fp32 | fp16 | int8
    kind: str  # bundle | model | dense
    bytes: int | None = None  # on disk (bundle: the variant's graphs + shared files)


def precision_of_variant(variant: str) -> str:
    for p in ("int8", "fp16"):
        if variant.startswith(p):
            return p
    return "fp32"


def _split(source: str) -> tuple[str, str | None]:
    base, sep, tail = source.rpartition("@")
    return (base, tail) if sep and base else (source, None)


def spec_target(source: str) -> SpecTarget:
    """``BUNDLE[@VARIANT]``, ``PRUNED_FOLDER[@int8]`` or a dense name (``tiny.en[@int8]``; default fp32)."""
    path_s, variant = _split(source)
    path = Path(path_s).expanduser()
    if (path / "manifest.json").is_file():
        from slimwhisper.bench.targets import bundle_bytes, resolve_target

        target = resolve_target(source)
        manifest = target.manifest()
        spec = ArchSpec.from_dict(manifest["spec"])
        variant = target.variant or manifest.get("default_variant", "fp32")
        return SpecTarget(source, target.label, spec, precision_of_variant(variant), "bundle", bundle_bytes(target))
    precision = precision_of_variant(variant) if variant else "fp32"
    if (path / "slimwhisper.json").is_file():
        meta = json.loads((path / "slimwhisper.json").read_text())
        spec = ArchSpec.from_dict(meta["spec"])
        return SpecTarget(source, f"{path.name}@{precision}", spec, precision, "model")
    if path.exists():
        raise DeviceError(f"{path} is neither a bundle (manifest.json) nor a pruned folder (slimwhisper.json)")
    return SpecTarget(source, f"{path_s}@{precision} (dense)", dense_spec(path_s), precision, "dense")
