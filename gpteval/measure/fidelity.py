"""Fidelity of a variant to the reference (same weights, fp32 eager, same device).

Teacher-forced: both engines see the same token ids and their logits are compared
position by position.  Free-running: both generate greedily from the same prompt and
the first token where they part is reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

_CHUNK_ROWS = 64


def fidelity_metrics(ref_logits: torch.Tensor, logits: torch.Tensor) -> dict:
    """Compare logits (..., V) of a variant with the reference's at the same positions.

    kl_mean: mean over positions of KL(p_ref || p) = sum_v p_ref(v) (ln p_ref(v) - ln p(v)),
        in nats, with p = softmax(logits); terms where p_ref(v) = 0 count as 0.
    top1_agree: fraction of positions where argmax(logits) == argmax(ref_logits).
    max_abs_logit_diff: max over positions and vocabulary of |logits - ref_logits|.
    Computed in float64 on the reference's device.
    """
    if ref_logits.shape != logits.shape:
        raise ValueError(f"logit shapes differ: reference {tuple(ref_logits.shape)}, "
                         f"variant {tuple(logits.shape)}")
    vocab = ref_logits.shape[-1]
    ref_all = ref_logits.detach().reshape(-1, vocab)
    cand_all = logits.detach().reshape(-1, vocab)
    kl_sum, agree, max_diff = 0.0, 0, 0.0
    # float64 copies of (positions, V) logits are large for a GPT-2 vocabulary: go in chunks
    for i in range(0, ref_all.shape[0], _CHUNK_ROWS):
        ref = ref_all[i:i + _CHUNK_ROWS].double()
        cand = cand_all[i:i + _CHUNK_ROWS].to(ref.device).double()
        logp_ref = F.log_softmax(ref, dim=-1)
        p_ref = logp_ref.exp()
        terms = p_ref * (logp_ref - F.log_softmax(cand, dim=-1))
        kl_sum += torch.where(p_ref > 0, terms, torch.zeros_like(terms)).sum().item()
        agree += int((ref.argmax(dim=-1) == cand.argmax(dim=-1)).sum().item())
        max_diff = max(max_diff, (cand - ref).abs().max().item())
    n = ref_all.shape[0]
    return {"kl_mean": kl_sum / n, "top1_agree": agree / n, "max_abs_logit_diff": max_diff}


def first_divergence(ref_tokens: Sequence | torch.Tensor,
                     tokens: Sequence | torch.Tensor) -> int | None:
    """Index (along the sequence) of the first generated token that differs from the
    reference's, in any row of a batch (B, N) or in a single sequence (N,); None when
    they agree throughout.  When one is shorter and agrees so far, its length."""
    ref = torch.as_tensor(ref_tokens).cpu()
    cand = torch.as_tensor(tokens).cpu()
    if ref.dim() == 1:
        ref, cand = ref[None], cand.view(1, -1)
    if ref.shape[0] != cand.shape[0]:
        raise ValueError(f"batch sizes differ: {ref.shape[0]} and {cand.shape[0]}")
    n = min(ref.shape[1], cand.shape[1])
    differs = (ref[:, :n] != cand[:, :n]).any(dim=0).nonzero()
    if differs.numel():
        return int(differs[0, 0])
    return None if ref.shape[1] == cand.shape[1] else n
