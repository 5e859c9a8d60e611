"""Quality: sliding-window perplexity, bits per byte, next-token accuracy, and task
accuracy (last-word cloze, multiple choice by log-likelihood).

All scores are teacher-forced `engine.forward(ids)` logits; log-probabilities are taken
with log_softmax in float32 and summed in float64.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from ..engine import Engine
from ..errors import UserError


@dataclass
class QualityResult:
    """Perplexity protocol and its numbers.

    ppl: exp(nll_sum / n_scored), the token-level perplexity.
    bpb: nll_sum / ln 2 / n_bytes, bits per byte of the text (None without n_bytes).
    next_token_acc: fraction of scored tokens that are the argmax of their logits.
    nll_sum: sum over scored tokens of -ln p(token | preceding tokens in its window), nats.
    n_scored: number of scored tokens (all but the first when stride < context).
    context, stride: the window length C and the step S between windows, in tokens.
    """

    ppl: float
    bpb: float | None
    next_token_acc: float
    nll_sum: float
    n_scored: int
    context: int
    stride: int

    def as_dict(self) -> dict:
        return asdict(self)


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) of each window, as in the Hugging Face perplexity guide:
    windows [begin, end) start every `stride` tokens and hold at most `context` tokens; a
    window scores its tokens from the previous window's end on, each with the overlap as
    extra context.  A window's own first token has nothing before it in the window and is
    never scored (the guide's label shift): with stride < context every token but the
    first of the text is scored exactly once; with stride == context each window's first
    token is skipped."""
    windows = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        windows.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def perplexity(engine: Engine, ids: torch.Tensor, context: int, stride: int,
               n_bytes: int | None = None) -> QualityResult:
    """Sliding-window perplexity of the 1-D token ids; see `QualityResult` for the
    definitions and `sliding_windows` for which tokens each window scores.  `n_bytes` is
    the UTF-8 length of the text the ids encode, for bits per byte."""
    ids = torch.as_tensor(ids, dtype=torch.long).view(-1)
    if ids.numel() < 2:
        raise UserError(f"perplexity needs at least 2 tokens of text, got {ids.numel()}; "
                        "use a longer evaluation text")
    if not 1 <= stride <= context:
        raise UserError(f"perplexity stride {stride} must be between 1 and the context "
                        f"{context}; set stride <= context in the config")
    if engine.max_positions and context > engine.max_positions:
        raise UserError(f"perplexity context {context} exceeds the model's "
                        f"{engine.max_positions} positions; lower the context in the config")
    nll_sum, n_scored, n_correct = 0.0, 0, 0
    for begin, end, first in sliding_windows(ids.numel(), context, stride):
        window = ids[begin:end]
        logits = engine.forward(window[None]).float()[0]  # (T, V)
        # logits at window position t predict token begin + t + 1
        pred = logits[first - 1 - begin:end - 1 - begin]
        target = window[first - begin:].to(pred.device)
        logp = F.log_softmax(pred, dim=-1).gather(-1, target[:, None])[:, 0]
        nll_sum -= logp.double().sum().item()
        n_correct += int((pred.argmax(dim=-1) == target).sum().item())
        n_scored += target.numel()
    bpb = nll_sum / math.log(2) / n_bytes if n_bytes else None
    return QualityResult(math.exp(nll_sum / n_scored), bpb, n_correct / n_scored, nll_sum,
                         n_scored, context, stride)


# ---- tasks ------------------------------------------------------------------------------
def continuation_logprobs(engine: Engine, tokenizer, context: str,
                          continuation: str) -> tuple[torch.Tensor, bool]:
    """Log-probabilities of the continuation's tokens given the context, and whether every
    one of them is the argmax (then greedy decoding produces the continuation exactly).

    Tokens as lm-evaluation-harness makes them: encode(context + continuation) and drop
    the first len(encode(context)) tokens, so BPE merges across the seam are the ones the
    model sees in running text.  A context too long for the model keeps its last tokens."""
    ctx = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    cont = whole[len(ctx):]
    limit = (engine.max_positions or len(whole)) + 1
    if not ctx or not cont or len(cont) >= limit:
        raise ValueError(f"cannot score {continuation!r} after {context!r}: the context is "
                         "empty, or the continuation is empty or longer than the model")
    ids = torch.tensor(whole[-limit:], dtype=torch.long)
    logits = engine.forward(ids[None, :-1]).float()[0]  # (T-1, V); row t predicts ids[t+1]
    pred = logits[-len(cont):]
    target = ids[-len(cont):].to(pred.device)
    logp = F.log_softmax(pred, dim=-1).gather(-1, target[:, None])[:, 0]
    greedy = bool((pred.argmax(dim=-1) == target).all().item())
    return logp.double().cpu(), greedy


_LAST_WORD = re.compile(r"(.*\S)(\s+\S+)\s*", re.DOTALL)


def split_last_word(text: str) -> tuple[str, str]:
    """LAMBADA split: (context, continuation) where the continuation is the whitespace
    before the last word plus the word itself."""
    m = _LAST_WORD.fullmatch(text)
    if m is None:
        raise ValueError(f"cloze text needs at least two words: {text!r}")
    return m.group(1), m.group(2)


def cloze_accuracy(engine: Engine, tokenizer, items: list[dict]) -> float:
    """Last-word cloze accuracy (LAMBADA): the fraction of items whose last word, with the
    space before it, is what greedy decoding produces given the rest of the text (every
    token of the word is the argmax)."""
    if not items:
        raise ValueError("cloze_accuracy needs at least one item")
    correct = 0
    for item in items:
        context, continuation = split_last_word(item["text"])
        correct += continuation_logprobs(engine, tokenizer, context, continuation)[1]
    return correct / len(items)


def choice_continuation(context: str, choice: str) -> str:
    """The choice as appended to the context: one space between them unless either side
    already has whitespace at the seam."""
    if context[-1:].isspace() or choice[:1].isspace():
        return choice
    return " " + choice


def multiple_choice(engine: Engine, tokenizer, items: list[dict]) -> dict:
    """Multiple-choice accuracy by log-likelihood.

    acc: fraction of items whose label is the choice with the highest sum of token
    log-probabilities given the context.
    acc_norm: the same with each sum divided by the choice's length in UTF-8 bytes (as
    appended, see `choice_continuation`), which removes the bias towards short choices.
    Ties go to the first choice.
    """
    if not items:
        raise ValueError("multiple_choice needs at least one item")
    hits = hits_norm = 0
    for item in items:
        scores, scores_norm = [], []
        for choice in item["choices"]:
            cont = choice_continuation(item["context"], choice)
            loglik = continuation_logprobs(engine, tokenizer, item["context"], cont)[0].sum()
            scores.append(float(loglik))
            scores_norm.append(float(loglik) / len(cont.encode("utf-8")))
        label = item["label"]
        hits += max(range(len(scores)), key=scores.__getitem__) == label
        hits_norm += max(range(len(scores_norm)), key=scores_norm.__getitem__) == label
    return {"acc": hits / len(items), "acc_norm": hits_norm / len(items)}
