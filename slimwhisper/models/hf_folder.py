"""Load a transformers-format Whisper folder: the step every converting source kind ends with.

Its own module so that the kinds that convert (``sources``: bundled/CTranslate2/hub,
``openai_pt``, ``slimdir``) all import it and none imports another: ``sources`` and
``openai_pt`` used to import each other for this.
"""

from __future__ import annotations

from pathlib import Path

from slimwhisper.models.api import LoadedModel, LoadOptions, ModelLoadError
from slimwhisper.models.bundled import BUNDLED, TOKENIZER_FOR_VOCAB

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def load_transformers_folder(
    path: Path, options: LoadOptions, *, source: str, kind: str, name: str | None = None,
    sha256: str | None = None, extra: dict | None = None,
) -> LoadedModel:
    """Load a Whisper folder in float32 with the requested attention and device.

    Refuses missing, unexpected or mis-shaped weights: transformers would only warn and leave
    random values in place, which looks like a working but useless model.
    """
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    try:
        model, info = WhisperForConditionalGeneration.from_pretrained(
            path, dtype=torch.float32, attn_implementation=options.attn_implementation, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the Whisper weights in {path}: {str(exc)[:600]}") from exc
    problems = [f"{what}: {sorted(names)[:8]}" for what, names in (
        ("missing weights", info.get("missing_keys")),
        ("unexpected weights", info.get("unexpected_keys")),
        ("mis-shaped weights", info.get("mismatched_keys")),
    ) if names]
    if problems:
        raise ModelLoadError(
            f"{path} does not hold a complete Whisper matching its config.json ({'; '.join(problems)}); "
            "if it is a pruned model, load it from its slimwhisper folder (with spec.json)"
        )
    model = to_device(model, options.device)
    extra = dict(extra or {})
    if any((path / f).exists() for f in PROCESSOR_FILES):
        processor = WhisperProcessor.from_pretrained(path)
    else:
        processor = bundled_processor_for_vocab(model.config.vocab_size, model.config.num_mel_bins, extra)
    if not (path / "generation_config.json").exists():
        model.generation_config = _default_generation_config(model.config, processor.tokenizer)
    return make_loaded(model, processor, path=path, source=source, kind=kind, name=name or path.name,
                   sha256=sha256, extra=extra)


def _default_generation_config(config, tokenizer):
    """Whisper generation settings for a folder without generation_config.json (suppress lists
    from the bundled model with the same vocabulary; no alignment heads: they are per checkpoint)."""
    from slimwhisper.models.convert import generation_config_for

    donor = TOKENIZER_FOR_VOCAB.get(config.vocab_size)
    donor_config = BUNDLED[donor].ct2_config() if donor else {}
    return generation_config_for(config, tokenizer, {**donor_config, "alignment_heads": []})


def to_device(model, device: str):
    import torch

    try:
        return model.to(torch.device(device)).eval()
    except (RuntimeError, AssertionError) as exc:  # e.g. "Torch not compiled with CUDA enabled"
        raise ModelLoadError(f"cannot move the model to device {device!r}: {exc}; use device='cpu'") from exc


def make_loaded(model, processor, *, path, source, kind, name, sha256, extra) -> LoadedModel:
    from slimwhisper.models.slim import spec_from_model

    gen = model.generation_config
    multilingual = bool(getattr(gen, "is_multilingual", model.config.vocab_size >= 51865))
    extra.setdefault("alignment_heads", getattr(gen, "alignment_heads", None))
    return LoadedModel(
        model=model, processor=processor, spec=spec_from_model(model), name=name, source=source, kind=kind,
        multilingual=multilingual, path=path, sha256=sha256, extra=extra,
    )


def bundled_processor_for_vocab(vocab: int, n_mels: int, extra: dict):
    """Borrow the bundled tokenizer whose vocabulary size matches (recorded in ``extra``)."""
    from slimwhisper.models.convert import build_processor

    donor = TOKENIZER_FOR_VOCAB.get(vocab)
    if donor is None:
        raise ModelLoadError(
            f"no tokenizer beside the weights and no bundled tokenizer for vocabulary size {vocab} "
            f"(bundled: {TOKENIZER_FOR_VOCAB}); put tokenizer.json next to the weights"
        )
    extra["tokenizer_from"] = f"bundled {donor} (vocabulary size {vocab}); no tokenizer was found beside the weights"
    return build_processor(BUNDLED[donor].tokenizer_json(), n_mels)
