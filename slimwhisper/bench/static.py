"""Static metrics: parameters (total, per component, non-zero), bytes on disk, FLOPs.

Parameter and FLOP formulas live in ``ArchSpec`` (one place); here they are read off a spec and,
for a torch model, checked against the real modules. Non-zero counts show what unstructured
pruning leaves in place: zeros still cost memory and time unless a sparse kernel uses them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from slimwhisper.spec import ArchSpec

# transformers Whisper parameter name -> ArchSpec.params_by_component() key
_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.\d+\.(self_attn|encoder_attn|fc1|fc2|final_layer_norm)")
_PART = {"self_attn": "self_attn", "encoder_attn": "cross_attn", "fc1": "ffn", "fc2": "ffn", "final_layer_norm": "ffn"}


def component_of(name: str) -> str:
    """Component key of one parameter name (the LayerNorm before a block counts with the block)."""
    m = _LAYER.match(name)
    if m:
        return f"{m.group(1)}.{_PART[m.group(2)]}"
    if name.startswith("model.encoder."):
        return "encoder.embed"  # conv1, conv2, positions, final LayerNorm
    if name.startswith(("model.decoder.", "proj_out.")):
        return "decoder.embed"  # token + position embeddings, final LayerNorm (proj_out is tied)
    raise ValueError(f"parameter {name} belongs to no Whisper component")


def measured_params(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per component: ``params`` (numel) and ``nonzero`` counted on the real tensors.

    ``named_parameters()`` yields a tied tensor once, as ``sum(p.numel() for p in model.parameters())`` does.
    """
    import torch

    out: dict[str, dict[str, int]] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            entry = out.setdefault(component_of(name), {"params": 0, "nonzero": 0})
            entry["params"] += p.numel()
            entry["nonzero"] += int(torch.count_nonzero(p).item())
    return out


def flops_summary(spec: ArchSpec, context: int) -> dict[str, int]:
    f = spec.flops(tokens=1, context=context)
    return {"encoder_window": f["encoder"], "cross_kv_window": f["cross_kv"], "decoder_token": f["decoder_token"],
            "decoder_context": context}


def spec_static(spec: ArchSpec, context: int) -> dict[str, Any]:
    by = spec.params_by_component()
    return {"params": sum(by.values()), "params_by_component": by, "flops": flops_summary(spec, context),
            "layers": {"encoder": len(spec.encoder), "decoder": len(spec.decoder)}}


def model_static(model: nn.Module, spec: ArchSpec, context: int) -> dict[str, Any]:
    """Spec figures plus what the modules really hold; a disagreement is reported, not hidden."""
    out = spec_static(spec, context)
    measured = measured_params(model)
    out["params_measured"] = sum(v["params"] for v in measured.values())
    out["nonzero"] = sum(v["nonzero"] for v in measured.values())
    out["nonzero_by_component"] = {k: v["nonzero"] for k, v in sorted(measured.items())}
    mismatch = {k: (out["params_by_component"].get(k), v["params"]) for k, v in measured.items()
                if out["params_by_component"].get(k) != v["params"]}
    if mismatch:
        out["spec_mismatch"] = {k: {"spec": a, "modules": b} for k, (a, b) in mismatch.items()}
    return out


def bundle_static(manifest: dict[str, Any], context: int) -> dict[str, Any]:
    """A bundle's figures come from the ArchSpec in its manifest (its weights are ONNX initializers)."""
    from slimwhisper.spec import ArchSpec

    spec_dict = manifest.get("spec") or manifest.get("arch_spec")
    if spec_dict is None:
        raise ValueError("bundle manifest.json has no 'spec'; re-export it with this slimwhisper")
    out = spec_static(ArchSpec.from_dict(spec_dict), context)
    out["nonzero"] = None  # quantized initializers: zeros are zero-point codes, not counted here
    return out
