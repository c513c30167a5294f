"""Physically remove pruned groups: smaller matrices, fewer heads, fewer layers — never masks.

``apply_plan`` first resolves a ``PrunePlan`` into what every block KEEPS (checking all guards and
reporting every problem at once), then slices each ``nn.Linear`` in place. Attention blocks are
replaced by ``SlimWhisperAttention`` whose ``AttnSpec`` keeps ``scale_dim`` = the dense head width:
removing Q/K channels drops terms of q.k but must not change the 1/sqrt(d_head) temperature
("The silence of the weights", arXiv 2509.26207). Dropped layers leave the ``nn.ModuleList``;
decoder attentions get their new position as ``layer_idx`` so KV caches index correctly.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from slimwhisper.compress.groups import ATTN_ATTR, GroupKey, attn_dims, layers_of, parse_name
from slimwhisper.compress.plan import AttnRecord, LayerRecord, PlanError, PrunePlan, PruneRecord, identity_record
from slimwhisper.models.slim import SlimWhisperAttention, attn_spec_of, spec_from_model
from slimwhisper.spec import AttnSpec


@dataclass(frozen=True)
class AttnCut:
    """What an attention block keeps, in CURRENT positions."""

    heads: tuple[int, ...]
    qk: tuple[tuple[int, ...], ...]  # per kept head, kept Q/K channels
    vo: tuple[tuple[int, ...], ...]

    def is_full(self, heads: int, qk: int, vo: int) -> bool:
        return len(self.heads) == heads and len(self.qk[0]) == qk and len(self.vo[0]) == vo


@dataclass(frozen=True)
class LayerCut:
    position: int  # current index of the kept layer
    self_attn: AttnCut
    ffn: tuple[int, ...]  # kept neurons
    cross_attn: AttnCut | None = None


# ---- resolve: names -> what each block keeps, with guards ---------------------------------------


def _kept_channels(block, kind, width, heads, keys, problems) -> tuple[tuple[int, ...], ...]:
    shared = {k.index for k in keys if k.kind == kind and k.head is None}
    per_head = defaultdict(set)
    for k in keys:
        if k.kind == kind and k.head is not None:
            per_head[k.head].add(k.index)
    kept = tuple(tuple(c for c in range(width) if c not in shared and c not in per_head[h]) for h in heads)
    widths = {h: len(cs) for h, cs in zip(heads, kept)}
    label = {"qk": "Q/K", "vo": "V/O"}[kind]
    if len(set(widths.values())) > 1:
        problems.append(
            f"{block}: per-head {label} channel removal leaves unequal head widths {widths}; "
            "remove the same number of channels from every kept head"
        )
    elif heads and not kept[0]:
        problems.append(f"{block}: the plan removes every {label} channel; remove the layer instead")
    return kept


def _attn_cut(block: str, attn: nn.Module, keys: list[GroupKey], problems: list[str]) -> AttnCut:
    heads, qk, vo = attn_dims(attn)
    gone = {k.index for k in keys if k.kind == "head"}
    kept_heads = tuple(h for h in range(heads) if h not in gone)
    if not kept_heads:
        problems.append(f"{block}: the plan removes all {heads} heads; remove the layer instead ({block.rsplit('.', 1)[0]}.layer)")
    kept_qk = _kept_channels(block, "qk", qk, kept_heads, keys, problems)
    kept_vo = _kept_channels(block, "vo", vo, kept_heads, keys, problems)
    return AttnCut(kept_heads, kept_qk, kept_vo)


def resolve(model: nn.Module, plan: PrunePlan) -> dict[str, list[LayerCut]]:
    """Per side, the cut of every KEPT layer. Raises ``PlanError`` listing every guard violated."""
    plan.validate(model)
    by_block: dict[tuple[str, int, str], list[GroupKey]] = defaultdict(list)
    for name in plan.remove:
        key = parse_name(name)
        by_block[(key.side, key.layer, key.component)].append(key)
    problems: list[str] = []
    cuts: dict[str, list[LayerCut]] = {}
    for side in ("encoder", "decoder"):
        layers = layers_of(model, side)
        cuts[side] = []
        for i, layer in enumerate(layers):
            if (side, i, "layer") in by_block:
                continue  # groups inside a removed layer go with it
            attn = {
                comp: _attn_cut(f"{side}.{i}.{comp}", getattr(layer, ATTN_ATTR[comp]), by_block[(side, i, comp)], problems)
                for comp in (("self_attn", "cross_attn") if side == "decoder" else ("self_attn",))
            }
            gone = {k.index for k in by_block[(side, i, "ffn")]}
            ffn = tuple(n for n in range(layer.fc1.out_features) if n not in gone)
            if not ffn:
                problems.append(f"{side}.{i}.ffn: the plan removes every FFN neuron; remove the layer instead ({side}.{i}.layer)")
            cuts[side].append(LayerCut(i, attn["self_attn"], ffn, attn.get("cross_attn")))
        if not cuts[side]:
            problems.append(f"{side}: the plan removes all {len(layers)} layers; keep at least one")
    if problems:
        raise PlanError(problems)
    return cuts


# ---- slicing ----------------------------------------------------------------------------------


def _index(t: torch.Tensor, dim: int, keep: list[int]) -> nn.Parameter:
    sliced = t.detach().index_select(dim, torch.tensor(keep, dtype=torch.long, device=t.device))
    return nn.Parameter(sliced, requires_grad=t.requires_grad)


def _sliced_linear(lin: nn.Linear, *, rows: list[int] | None = None, cols: list[int] | None = None) -> nn.Linear:
    out_f = len(rows) if rows is not None else lin.out_features
    in_f = len(cols) if cols is not None else lin.in_features
    new = nn.Linear(in_f, out_f, bias=lin.bias is not None, device="meta")
    weight = lin.weight
    new.weight = _index(weight, 0, rows) if rows is not None else weight
    if cols is not None:
        new.weight = _index(new.weight, 1, cols)
    if lin.bias is not None:
        new.bias = _index(lin.bias, 0, rows) if rows is not None else lin.bias
    return new


def _slice_attn(attn: nn.Module, cut: AttnCut, layer_idx: int | None) -> nn.Module:
    heads, qk, vo = attn_dims(attn)
    if cut.is_full(heads, qk, vo):
        attn.layer_idx = layer_idx
        return attn
    qrows = [h * qk + c for h, cs in zip(cut.heads, cut.qk) for c in cs]
    vrows = [h * vo + c for h, cs in zip(cut.heads, cut.vo) for c in cs]
    # scale_dim stays the dense head width whatever channels go (2509.26207)
    spec = AttnSpec(len(cut.heads), len(cut.qk[0]), len(cut.vo[0]), attn_spec_of(attn).scale_dim)
    with torch.device("meta"):
        new = SlimWhisperAttention(
            attn.embed_dim, spec, is_decoder=attn.is_decoder, is_causal=attn.is_causal, layer_idx=layer_idx, config=attn.config
        )
    new.q_proj = _sliced_linear(attn.q_proj, rows=qrows)
    new.k_proj = _sliced_linear(attn.k_proj, rows=qrows)
    new.v_proj = _sliced_linear(attn.v_proj, rows=vrows)
    new.out_proj = _sliced_linear(attn.out_proj, cols=vrows)
    new.train(attn.training)
    return new


def _slice_layer(layer: nn.Module, cut: LayerCut, new_idx: int, decoder: bool) -> None:
    layer.self_attn = _slice_attn(layer.self_attn, cut.self_attn, new_idx if decoder else layer.self_attn.layer_idx)
    if decoder:
        layer.encoder_attn = _slice_attn(layer.encoder_attn, cut.cross_attn, new_idx)
    if len(cut.ffn) != layer.fc1.out_features:
        keep = list(cut.ffn)
        layer.fc1 = _sliced_linear(layer.fc1, rows=keep)
        layer.fc2 = _sliced_linear(layer.fc2, cols=keep)


def _compose(rec: LayerRecord, cut: LayerCut) -> LayerRecord:
    def attn(r: AttnRecord, c: AttnCut) -> AttnRecord:
        return r.keep(list(c.heads), [list(x) for x in c.qk], [list(x) for x in c.vo])

    cross = attn(rec.cross_attn, cut.cross_attn) if cut.cross_attn is not None else None
    return LayerRecord(rec.source_index, attn(rec.self_attn, cut.self_attn), tuple(rec.ffn[n] for n in cut.ffn), cross)


def _remap_alignment_heads(model: nn.Module, cuts: list[LayerCut]) -> None:
    # generation_config.alignment_heads = [[decoder layer, cross-attention head], ...] (word timestamps)
    gen = getattr(model, "generation_config", None)
    old = getattr(gen, "alignment_heads", None)
    if not old:
        return
    where = {
        (cut.position, h): [new_idx, j] for new_idx, cut in enumerate(cuts) for j, h in enumerate(cut.cross_attn.heads)
    }
    gen.alignment_heads = [where[(layer, head)] for layer, head in old if (layer, head) in where]


def _previous_record(model: nn.Module, previous: PruneRecord | None) -> PruneRecord:
    rec = previous or getattr(model, "slim_record", None) or identity_record(model)
    if isinstance(rec, dict):  # as load_slim leaves it (models/ must not import compress/)
        rec = PruneRecord.from_dict(rec)
    have = {s: len(layers_of(model, s)) for s in ("encoder", "decoder")}
    want = {s: len(rec.side(s)) for s in ("encoder", "decoder")}
    if have != want or rec.spec != spec_from_model(model):
        raise PlanError([f"the previous pruning record (layers {want}) does not describe this model (layers {have})"])
    return rec


@torch.no_grad()
def apply_plan(model: nn.Module, plan: PrunePlan, *, previous: PruneRecord | None = None) -> PruneRecord:
    """Remove ``plan``'s groups from ``model`` in place and return the composed ``PruneRecord``.

    ``previous`` is the record of an already-pruned model; by default the one an earlier
    ``apply_plan``/``load_slim`` left on ``model.slim_record``, else the model counts as dense.
    """
    prev = _previous_record(model, previous)
    cuts = resolve(model, plan)  # all guards pass before anything is touched
    records = {}
    for side in ("encoder", "decoder"):
        old = layers_of(model, side)
        kept = []
        for new_idx, cut in enumerate(cuts[side]):
            layer = old[cut.position]
            _slice_layer(layer, cut, new_idx, side == "decoder")
            layer.slim_source_index = prev.side(side)[cut.position].source_index
            kept.append(layer)
        getattr(model.model, side).layers = nn.ModuleList(kept)
        records[side] = tuple(_compose(prev.side(side)[c.position], c) for c in cuts[side])
    _remap_alignment_heads(model, cuts["decoder"])
    for cfg in {id(c): c for c in (model.config, model.model.encoder.config, model.model.decoder.config)}.values():
        cfg.encoder_layers = len(cuts["encoder"])
        cfg.decoder_layers = len(cuts["decoder"])
    model.tie_weights()
    record = PruneRecord(
        records["encoder"],
        records["decoder"],
        spec_from_model(model),
        prev.source_layers,
        prev.steps + (tuple(plan.to_dict()["remove"]),),
    )
    model.slim_record = record
    return record
