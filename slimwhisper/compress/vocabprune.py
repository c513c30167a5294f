"""Vocabulary pruning, part 2: slice a Whisper to the kept token ids (issue 12).

The token embedding and the output projection are one tied (vocab, d) matrix in Whisper
(openai/whisper ``TextDecoder``: ``logits = x @ token_embedding.weight.T``), so both shrink to the
kept rows at once and stay tied. Kept ids stay in ascending original order (``runtime/vocabmap.py``
explains why that keeps the timestamp arithmetic valid). The model's config and generation config
are rewritten in model ids; the id map goes on the model as ``slim_vocab`` and is saved beside
the weights (``models/slimdir.py``), so every path maps decoded ids back to original ids.

The logits at a kept id are exactly the dense model's logits at that id (same hidden states, same
row of the projection): only the softmax's normaliser changes, by the mass of removed tokens.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import torch
from torch import nn

from slimwhisper.compress.vocab import VocabError
from slimwhisper.runtime.vocabmap import ID_FIELDS, VocabMap


def slice_vocab(model, kept: Sequence[int], language: str | None = None) -> VocabMap:
    """Shrink ``model`` (a transformers Whisper) IN PLACE to the original ids ``kept``."""
    from slimwhisper.models.slim import spec_from_model

    if getattr(model, "slim_vocab", None) is not None:
        raise VocabError("this model's vocabulary is already pruned; prune the vocabulary of the unpruned model "
                         "(structured pruning may come before it, in the same command or an earlier one)")
    vmap = VocabMap(tuple(sorted({int(i) for i in kept})), int(model.config.vocab_size), language)
    if vmap.kept != tuple(int(i) for i in kept):
        raise VocabError("kept ids must be unique and ascending (original order)")
    old = model.model.decoder.embed_tokens
    index = torch.as_tensor(vmap.kept, dtype=torch.long, device=old.weight.device)
    pad = getattr(model.config, "pad_token_id", None)
    padding_idx = vmap.kept_only([pad])[0] if pad is not None and vmap.kept_only([pad]) else None
    emb = nn.Embedding(vmap.size, old.embedding_dim, padding_idx=padding_idx).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        emb.weight.copy_(old.weight.index_select(0, index))
    model.model.decoder.embed_tokens = emb
    model.proj_out = nn.Linear(old.embedding_dim, vmap.size, bias=False).to(old.weight.device, old.weight.dtype)
    model.proj_out.weight = emb.weight  # tied, as before: one matrix
    remapped = vmap.generation_config(model.config)  # in place below: every submodule shares this config
    for name in ID_FIELDS:
        if hasattr(model.config, name):
            setattr(model.config, name, getattr(remapped, name))
    model.config.vocab_size = vmap.size
    multilingual = bool(getattr(model.generation_config, "is_multilingual", vmap.source_vocab >= 51865))
    model.generation_config = vmap.generation_config(model.generation_config)
    model.generation_config.is_multilingual = multilingual  # no longer derivable from the vocabulary size
    model.slim_vocab = vmap
    _update_record(model, spec_from_model(model))
    return vmap


def _update_record(model, spec) -> None:
    """A structured-pruning record on the model describes the shapes; its spec gets the new vocabulary."""
    rec = getattr(model, "slim_record", None)
    if rec is None:
        return
    if isinstance(rec, dict):
        model.slim_record = {**rec, "spec": spec.to_dict()}
    else:
        model.slim_record = dataclasses.replace(rec, spec=spec)


def selection_for(loaded, config, log=print):
    """The kept tokens ``config`` selects with ``loaded``'s tokenizer (``compress.vocab``); memoised
    on ``loaded`` so a latency-budget search and the slicing after it select once."""
    from slimwhisper.compress.vocab import select_tokens

    tokenizer = loaded.processor.tokenizer
    if len(tokenizer) != loaded.model.config.vocab_size:
        raise VocabError(f"{loaded.name}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
                         f"{loaded.model.config.vocab_size}; vocabulary pruning needs the model's own Whisper tokenizer")
    memo = loaded.extra.setdefault("vocab_selection", {})
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in memo:
        memo[key] = select_tokens(tokenizer, config, log)
    return memo[key]


def prune_loaded(loaded, config, log=print):
    """Select the kept tokens (``selection_for``) and slice the model; ``loaded.spec`` is updated.
    Returns the ``Selection`` (its report goes in pruning.json)."""
    from slimwhisper.models.slim import spec_from_model

    selection = selection_for(loaded, config, log)
    loaded.extra.pop("vocab_selection", None)  # the tokenizer ids it holds are the unpruned ones
    multilingual = loaded.multilingual
    slice_vocab(loaded.model, selection.kept, config.language)
    loaded.spec = spec_from_model(loaded.model)
    loaded.multilingual = multilingual
    return selection
