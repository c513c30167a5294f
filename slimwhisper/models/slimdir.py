"""Save and reload a pruned Whisper as a self-describing folder.

Folder layout (format ``SLIM_FORMAT``):

* ``model.safetensors``  — the weights (the tied output projection stored once, as the embedding)
* ``config.json``        — NOT loadable by a stock transformers loader on purpose: ``model_type`` is
  ``slimwhisper`` and a poison ``activation_function`` makes ``WhisperForConditionalGeneration
  .from_pretrained`` fail with a message naming slimwhisper, instead of silently building dense
  layers and re-initialising the pruned ones. The real ``WhisperConfig`` is under ``whisper_config``
  (without its ``model_type``, which transformers would otherwise unwrap and use).
* ``slimwhisper.json``   — format version, the ``ArchSpec`` (per-layer shapes), the source model
* ``pruning.json``       — the pruning record and the scoring/allocation configs that produced it
* ``generation_config.json`` and the processor/tokenizer files.
* ``checksums.json``     — the sha256 of every file above, written last. Loading verifies them, as
  a bundle's manifest is verified: flipped bytes in the weights, or a head count edited in
  ``slimwhisper.json`` while the shapes still match, would otherwise load and transcribe garbage.
  Folders saved before checksums existed (no ``checksums`` entry in ``slimwhisper.json``) load
  unverified.

Torch and transformers are imported inside functions: ``slimwhisper.models`` imports this module to
register the ``slim`` source kind, and that import must stay cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimwhisper.errors import UserError
from slimwhisper.models.api import LoadedModel, LoadOptions, ModelLoadError, SourceKind
from slimwhisper.models.cache import file_chunks, sha256_of
from slimwhisper.outputs import check_output, output_dir
from slimwhisper.spec import ArchSpec

SLIM_FORMAT = 1
META_FILE = "slimwhisper.json"
WEIGHTS_FILE = "model.safetensors"
CHECKSUMS_FILE = "checksums.json"
RECREATE = "re-create the folder (run prune/recover/tspar again) or copy it again from where it was made"
TIED = "proj_out.weight"
EMBED = "model.decoder.embed_tokens.weight"
POISON = "slimwhisper-pruned-model: load this folder with slimwhisper.models.load_model(<folder>)"


class SlimDirError(UserError, ValueError):
    """A slim folder cannot be written (bad target, inconsistent record); the message says what to do."""


def is_slim_dir(source: str | Path) -> bool:
    p = Path(source)
    return p.is_dir() and (p / META_FILE).is_file()


# ---- save -----------------------------------------------------------------------------------------


def _as_dict(obj: Any) -> dict | None:
    if obj is None or isinstance(obj, dict):
        return obj
    return obj.to_dict()  # PruneRecord / ArchSpec / config dataclasses


def _config_json(model) -> dict:
    whisper = model.config.to_dict()
    whisper.pop("model_type", None)
    return {
        "model_type": "slimwhisper",
        "architectures": ["SlimWhisperForConditionalGeneration"],
        "activation_function": POISON,
        "slimwhisper_format": SLIM_FORMAT,
        "whisper_config": whisper,
    }


def _write_folder(tmp: Path, model, processor, meta: dict, pruning: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != TIED}
    save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "slimwhisper_format": str(SLIM_FORMAT)})
    (tmp / "config.json").write_text(json.dumps(_config_json(model), indent=2) + "\n")
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / "pruning.json").write_text(json.dumps(pruning, indent=2) + "\n")
    model.generation_config.save_pretrained(tmp)
    if processor is not None:
        processor.save_pretrained(tmp)
    if getattr(model, "slim_vocab", None) is not None:  # vocabulary pruning: kept ids (issue 12)
        model.slim_vocab.save(tmp)
    _write_checksums(tmp)


def _write_checksums(folder: Path) -> None:
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    sums = {f.relative_to(folder).as_posix(): sha256_of(file_chunks([f])) for f in files}
    (folder / CHECKSUMS_FILE).write_text(json.dumps({"sha256": sums}, indent=2) + "\n")


def save_slim(
    loaded_or_model,
    out_dir: str | Path,
    *,
    record=None,
    configs: dict | None = None,
    source: dict | None = None,
    processor=None,
    force: bool = False,
) -> Path:
    """Write a (pruned) model as a slim folder, atomically (temp folder, then rename).

    ``record`` is the ``PruneRecord`` (or its dict); default: the one surgery left on the model.
    ``configs`` are the scoring/allocation configs (dicts or dataclasses with ``to_dict``).
    ``source`` describes the dense source (name, sha256, ...); default: taken from the LoadedModel.
    """
    from slimwhisper.models.slim import spec_from_model

    loaded = loaded_or_model if isinstance(loaded_or_model, LoadedModel) else None
    model = loaded.model if loaded else loaded_or_model
    processor = processor if processor is not None else (loaded.processor if loaded else None)
    out = Path(out_dir)
    src = dict(_default_source(loaded), **(source or {}))
    protected = [Path(p) for p in (src.get("path"), loaded and loaded.path) if p]
    check_output(out, "model", force=force, inputs=protected)  # before the checks below and any writing

    spec = spec_from_model(model)
    if sum(p.numel() for p in model.parameters()) != spec.params():
        raise SlimDirError("the model's parameter count disagrees with its ArchSpec; it was modified outside slimwhisper")
    rec = _as_dict(record if record is not None else getattr(model, "slim_record", None))
    if rec is not None and ArchSpec.from_dict(rec["spec"]) != spec:
        raise SlimDirError("the pruning record describes other shapes than this model; pass the record apply_plan returned")
    meta = {"format": SLIM_FORMAT, "spec": spec.to_dict(), "source": src, "params": spec.params(),
            "checksums": CHECKSUMS_FILE}  # says that a missing checksums file is damage, not an old folder
    pruning = {"record": rec, "configs": {k: _as_dict(v) for k, v in (configs or {}).items()}}

    with output_dir(out, "model", force=force, inputs=protected) as tmp:
        _write_folder(tmp, model, processor, meta, pruning)
    return out


def appended_configs(loaded: LoadedModel, key: str, entry: dict) -> dict:
    """The configs ``loaded`` was made with (its ``pruning.json``), plus ``entry`` under ``key``; a step
    that already ran keeps its entry and the new one becomes ``key_2``, ``key_3``, ... (in order)."""
    configs = dict((loaded.extra.get("pruning") or {}).get("configs") or {})
    name, i = key, 2
    while name in configs:
        name, i = f"{key}_{i}", i + 1
    configs[name] = entry
    return configs


def _default_source(loaded: LoadedModel | None) -> dict:
    if loaded is None:
        return {}
    if "source_model" in loaded.extra:  # a slim folder pruned again: keep the dense origin
        return dict(loaded.extra["source_model"])
    return {"name": loaded.name, "source": loaded.source, "kind": loaded.kind, "sha256": loaded.sha256,
            "path": str(loaded.path) if loaded.path else None}  # fmt: skip


# ---- load -----------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path.parent} is not a complete slimwhisper folder: {path.name} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); the folder is damaged: {RECREATE}") from exc


def _verify(path: Path) -> dict[str, str] | None:
    """Check every file listed in ``checksums.json``; its recorded sums, or None if it has none."""
    sums_path = path / CHECKSUMS_FILE
    if not sums_path.is_file():
        return None
    record = _read_json(sums_path)
    sums = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(sums, dict):
        raise ModelLoadError(f"{sums_path} has no 'sha256' table; the folder is damaged: {RECREATE}")
    damaged = []
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            damaged.append(f"{name} is missing")
        elif sha256_of(file_chunks([f])) != digest:
            damaged.append(f"{name} differs from the sha256 recorded when it was saved")
    if damaged:
        raise ModelLoadError(f"pruned folder {path} is damaged: {'; '.join(damaged)}; {RECREATE}")
    return sums


def _read_weights(path: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path / WEIGHTS_FILE))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path} is not a complete slimwhisper folder: {WEIGHTS_FILE} is missing; {RECREATE}") from exc
    except (SafetensorError, OSError) as exc:  # e.g. a truncated copy of an old, unchecksummed folder
        raise ModelLoadError(f"{path / WEIGHTS_FILE} cannot be read ({str(exc)[:120]}); the file is damaged or "
                             f"truncated: {RECREATE}") from exc


def _build(path: Path, meta: dict, options: LoadOptions):
    import torch
    from transformers import WhisperConfig

    from slimwhisper.models.slim import check_state_dict, model_from_spec
    from slimwhisper.spec import SpecError

    try:
        spec = ArchSpec.from_dict(meta["spec"])
        config = WhisperConfig.from_dict(_read_json(path / "config.json")["whisper_config"])
        config._attn_implementation = options.attn_implementation
        model = model_from_spec(config, spec)
        state = _read_weights(path)
        check_state_dict(model, state)
    except (SpecError, KeyError) as exc:
        raise ModelLoadError(f"cannot load slim folder {path}: {exc}") from exc
    state = {k: v.to(torch.float32) for k, v in state.items()}
    state.setdefault(TIED, state[EMBED])
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    return model.to(options.device).eval()


def load_slim(path: str | Path, options: LoadOptions | None = None) -> LoadedModel:
    """Rebuild a slim folder with exactly its saved per-layer shapes; float32, eval mode."""
    from transformers import (
        GenerationConfig,
        WhisperFeatureExtractor,
        WhisperProcessor,
        WhisperTokenizer,
    )

    from slimwhisper.models.hf_folder import (
        PROCESSOR_FILES,
        bundled_processor_for_vocab,
        make_loaded,
    )

    options = options or LoadOptions()
    p = Path(path)
    sums = _verify(p)  # first: a damaged file is named as such, not as whatever it breaks later
    meta = _read_json(p / META_FILE)
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{p / META_FILE} is not a JSON object; the folder is damaged: {RECREATE}")
    if sums is None and meta.get("checksums"):
        raise ModelLoadError(f"pruned folder {p} is damaged: {meta['checksums']} is missing; {RECREATE}")
    if meta.get("format") != SLIM_FORMAT:
        raise ModelLoadError(f"{p}: slimwhisper folder format {meta.get('format')!r}; this version reads {SLIM_FORMAT}")
    model = _build(p, meta, options)
    _attach_vocab_map(p, model, meta)
    if (p / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(p)
    extra: dict[str, Any] = {"slimwhisper": meta, "source_model": meta.get("source", {})}
    if any((p / f).exists() for f in PROCESSOR_FILES):
        # Built from its parts: WhisperProcessor.from_pretrained would also read our config.json.
        processor = WhisperProcessor(
            feature_extractor=WhisperFeatureExtractor.from_pretrained(p), tokenizer=WhisperTokenizer.from_pretrained(p)
        )
    else:
        processor = bundled_processor_for_vocab(model.config.vocab_size, model.config.num_mel_bins, extra)
    pruning = _read_json(p / "pruning.json") if (p / "pruning.json").is_file() else {"record": None, "configs": {}}
    extra["pruning"] = pruning
    model.slim_record = pruning.get("record")  # a dict: compress.surgery turns it back into a PruneRecord
    sha = sums.get(WEIGHTS_FILE) if sums else None
    sha = sha or sha256_of(file_chunks([p / WEIGHTS_FILE]))
    return make_loaded(model, processor, path=p, source=str(path), kind="slim", name=p.resolve().name, sha256=sha, extra=extra)


def _attach_vocab_map(p: Path, model, meta: dict) -> None:
    """A vocabulary-pruned folder's id map (``vocab_map.json``) goes on the model as ``slim_vocab``."""
    from slimwhisper.runtime.vocabmap import VOCAB_MAP_FILE, VocabMap

    source_vocab = meta["spec"].get("source_vocab")
    if not (p / VOCAB_MAP_FILE).is_file():
        if source_vocab is not None:
            raise ModelLoadError(f"pruned folder {p} is damaged: its vocabulary was pruned but {VOCAB_MAP_FILE} "
                                 f"is missing; {RECREATE}")
        return
    vmap = VocabMap.load(p / VOCAB_MAP_FILE)
    vmap.check(vocab=model.config.vocab_size, where=str(p))
    if source_vocab != vmap.source_vocab:
        raise ModelLoadError(f"{p}: {VOCAB_MAP_FILE} is for a {vmap.source_vocab}-token vocabulary but "
                             f"{META_FILE} says {source_vocab}; {RECREATE}")
    model.slim_vocab = vmap


# Before "transformers" (30): a slim folder also has config.json and weights.
SLIM_KIND = SourceKind("slim", is_slim_dir, load_slim, "a pruned slimwhisper folder (with slimwhisper.json)",
                       priority=20)
