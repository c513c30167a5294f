"""Distillation losses on the teacher cache: top-k KL, encoder-output L2, layer-wise MSE; SpecAugment.

* **Top-k KL** (Hinton et al. 2015, on the cached top-k): the teacher distribution at
  temperature T restricted to its k most likely tokens and renormalised,
  p_i = softmax(log p_teacher / T) over the top-k (log p = z - log Z, so this is softmax(z / T)
  on those tokens), against the student's FULL-vocabulary log-softmax(z_s / T) at the same ids:
  KL = sum_i p_i (log p_i - log q_i), averaged over counted positions, scaled by T^2 so its
  gradients keep the scale of the hard-label term. Mass the student puts outside the top-k is
  pushed down through the normalisation of q.
* **KD loss** = a * CE(pseudo-label) + (1 - a) * T^2 * KL + b * ||E_s - E_t||^2 / ||E_t||^2, the
  last term on the encoder output (FUTO acft-style feature distillation), relative so b is
  scale-free. With ``decoder_only`` the student's decoder reads the CACHED dense encoder output
  and the encoder is never run (valid only when the student's encoder equals the teacher's). With
  ``cached_stem`` the encoder starts at layer 0 from the cached dense layer-0 input (conv stem +
  positions, never pruned, so the student's equals the teacher's while the stem is frozen).
* **Layer-wise MSE**: encoder layer j of the student (source layer s) maps the cached dense input
  of layer s to the dense output of layer s: ||f_j(h_s) - h_{s+1}||^2 / ||h_{s+1}||^2, every
  pruned layer independently (their parameters are disjoint, so one summed loss trains each on
  its own term; AdamW is per parameter).
* **SpecAugment** (Park et al. 2019, LD policy without time warping): 2 frequency masks of
  width <= 27 mel bins and 2 time masks of width <= 100 frames, filled with the utterance mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from slimwhisper.compress.calib import IGNORE

SPEC_F, SPEC_MF, SPEC_T, SPEC_MT = 27, 2, 100, 2


def spec_augment(features: torch.Tensor) -> torch.Tensor:
    """Masked copy of (B, n_mels, frames) features (torch's RNG: seeded per step by the engine)."""
    out = features.clone()
    b, n_mels, frames = out.shape
    fill = out.mean(dim=(1, 2), keepdim=True)
    for row in range(b):
        for _ in range(SPEC_MF):
            w = int(torch.randint(0, SPEC_F + 1, ()))
            f0 = int(torch.randint(0, max(1, n_mels - w), ()))
            out[row, f0 : f0 + w, :] = fill[row]
        for _ in range(SPEC_MT):
            w = int(torch.randint(0, SPEC_T + 1, ()))
            t0 = int(torch.randint(0, max(1, frames - w), ()))
            out[row, :, t0 : t0 + w] = fill[row]
    return out


def topk_kl(student_logits: torch.Tensor, topk_logp: torch.Tensor, topk_ids: torch.Tensor, targets: torch.Tensor,
            temperature: float) -> torch.Tensor:  # fmt: skip
    # Both distributions renormalised over the SAME support (the teacher's top-k ids). Gathering
    # the student's full-vocabulary log-softmax instead (an unnormalised q) made the term demand
    # that the whole mass at temperature T sit on k of 51,864 tokens: at T = 2 that forced
    # over-confident logits (tiny.en demo: 48% WER after 30 steps vs 8.5% with live full-vocab KD).
    mask = targets != IGNORE
    logq = torch.log_softmax(student_logits[mask].float().gather(-1, topk_ids[mask]) / temperature, -1)
    logp = torch.log_softmax(topk_logp[mask].float() / temperature, -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def relative_mse(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.dim()))
    return ((x.float() - target.float()).square().sum(dims) / target.float().square().sum(dims).clamp_min(1e-12)).mean()


def _layer(layer, h: torch.Tensor) -> torch.Tensor:
    out = layer(h, None)  # (hidden, attention mask); older transformers return a tuple
    return out[0] if isinstance(out, tuple) else out


def encoder_from_stem(encoder, stem_out: torch.Tensor) -> torch.Tensor:
    """The encoder's layers and final norm on a given layer-0 input (what ``WhisperEncoder.forward``
    does after the stem; no dropout / layer drop: recovery trains with both at 0)."""
    h = stem_out
    for layer in encoder.layers:
        h = _layer(layer, h)
    return encoder.layer_norm(h)


def kd_loss(temperature: float, alpha: float, *, decoder_only: bool = False, encoder_l2: float = 0.0,
            augment: bool = False, cached_stem: bool = False) -> Callable:  # fmt: skip
    """loss_fn(model, CachedBatch) for the engine: a CE + (1 - a) T^2 KL_topk (+ b encoder L2)."""

    def loss_fn(model, batch):
        logs = {}
        if decoder_only:
            logits = model(encoder_outputs=(batch.encoder_out,), decoder_input_ids=batch.inputs).logits
            feat = None
        else:
            if cached_stem:
                enc = encoder_from_stem(model.model.encoder, batch.hidden[:, 0])
            else:
                feats = spec_augment(batch.features) if augment else batch.features
                enc = model.model.encoder(feats).last_hidden_state
            logits = model(encoder_outputs=(enc,), decoder_input_ids=batch.inputs).logits
            feat = relative_mse(enc, batch.encoder_out) if encoder_l2 else None
        ce = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
        kl = topk_kl(logits, batch.topk_logp, batch.topk_ids, batch.targets, temperature)
        loss = alpha * ce + (1 - alpha) * temperature**2 * kl
        logs.update(ce=float(ce.detach()), kl=float(kl.detach()))
        if feat is not None:
            loss = loss + encoder_l2 * feat
            logs["enc_l2"] = float(feat.detach())
        return loss, logs

    return loss_fn


def layerwise_loss(pairs: list[tuple[int, int]]) -> Callable:
    """loss_fn for student encoder layers ``j`` trained on dense layer ``s``'s cached input/output."""

    def loss_fn(model, batch):
        layers = model.model.encoder.layers
        total, logs = 0.0, {}
        for j, s in pairs:
            term = relative_mse(_layer(layers[j], batch.hidden[:, s]), batch.hidden[:, s + 1])
            total = total + term
            logs[f"enc{j}"] = float(term.detach())
        return total, logs

    return loss_fn
