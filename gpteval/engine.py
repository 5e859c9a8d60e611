"""Engines: the one interface the harness measures.

An engine runs a GPT for inference: `reset(batch, max_len)` prepares a KV cache,
`prefill(ids)` runs the prompt and returns logits for every position, `decode(token)`
appends one token per sequence and returns its next-token logits.  `forward(ids)` is
the teacher-forced full-sequence pass used by quality and fidelity metrics.  Logits
come back as float32 on the engine's device so every metric sees the same dtype.

`TorchEngine` wraps gpteval's reference model; `HFEngine` wraps Hugging Face's
`GPT2LMHeadModel` with the same weights (the peer most users run today).  ONNX Runtime
and TensorRT engines live with their passes in `optimizers/`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod

import torch

from .model import GPT, greedy_token


class Engine(ABC):
    backend: str = "?"
    device: str = "cpu"
    vocab_size: int = 0
    max_positions: int = 0

    @abstractmethod
    def reset(self, batch: int, max_len: int) -> None:
        """Prepare an empty KV cache for `batch` sequences of up to `max_len` tokens."""

    @abstractmethod
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt ids (B, T) from position 0; the next token's logits (B, 1, V)
        float32.  Only the last position's: that is what generation computes (the lm_head
        over every prompt position would put a third of GPT-2's prefill FLOPs into TTFT)."""

    @abstractmethod
    def decode(self, token: torch.Tensor) -> torch.Tensor:
        """Append token (B, 1) at the next position; next-token logits (B, V) float32."""

    def decode_greedy(self, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """decode(token) and the greedy next token (B, 1) int64: argmax of the logits, the
        first largest (a NaN counts as the largest).  An engine that finds it inside its
        step overrides this (fused-decode: in its lm_head, while the logits are hot)."""
        logits = self.decode(token)
        return logits, greedy_token(logits)

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of weights this engine holds (what one decode step reads)."""

    @abstractmethod
    def describe(self) -> dict:
        """{'backend', 'device', 'dtype', ...}: what a report needs to say what ran."""

    @abstractmethod
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for a whole sequence (every position)."""

    def decode_nbytes(self) -> int:
        """Bytes of weights one decode step reads: all of them except embedding tables
        that are only gathered (one row per token).  bandwidth_gbs is built on this."""
        return self.nbytes()

    def synchronize(self) -> None:
        """Wait for queued device work, so a clock read after it means something."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def artifact_files(self) -> list[str]:
        """Files the engine runs from (exported graphs, engines); empty for in-memory ones."""
        return []


def module_nbytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each tensor counted once (tied weights too).

    Quantized tensor subclasses and packed params report their own storage where they can.
    """
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_nbytes(t)
    # torch.ao dynamic-quantized Linear keeps its int8 weight in packed params, not parameters
    for m in module.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            total += tensor_nbytes(w) + (tensor_nbytes(b) if b is not None else 0)
    return total


def tensor_nbytes(t: torch.Tensor) -> int:
    try:
        if t.is_quantized:
            return t.numel() * t.element_size()
    except Exception:
        pass
    # torchao tensor subclasses hold their data in inner tensors
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        try:
            names, _ = t.__tensor_flatten__()
            return sum(tensor_nbytes(getattr(t, n)) for n in names)
        except Exception:
            pass
    return t.numel() * t.element_size()


def gathered_embedding_nbytes(transformer, lm_head) -> int:
    """Bytes of the position table, and of the token table unless lm_head reads it whole
    (tied weights) or the model holds none of its own (fused-decode's reads the head's
    columns): a decode step gathers one row of each."""
    wte = getattr(transformer.wte, "weight", None)
    total = tensor_nbytes(transformer.wpe.weight)
    if wte is not None and getattr(lm_head, "weight", None) is not wte:
        total += tensor_nbytes(wte)
    return total


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class TorchEngine(Engine):
    """gpteval's reference GPT run in PyTorch.  Passes mutate `self.model` or swap
    `self.decode_fn` (torch.compile); what they change is recorded in `self.notes`."""

    backend = "torch"
    # Passes that replace the decode step only (compile, the fused kernel) set this, so that
    # teacher-forced numbers (fidelity, perplexity, tasks) are that step's own, a token at a
    # time, and not the eager forward's that generation never runs.
    forward_by_decode = False

    def __init__(self, model: GPT, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.vocab_size = model.config.vocab_size
        self.max_positions = model.config.n_positions
        self.notes: list[str] = []
        self.prefill_fn = model.prefill
        self.decode_fn = model.decode
        self._pos_t: torch.Tensor | None = None  # next decode position, on the device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.transformer.wpe.weight.dtype

    def reset(self, batch: int, max_len: int) -> None:
        if self.model.max_batch != batch or self.model.max_len != max_len:
            self.model.setup_cache(batch, max_len)
        self._pos_t = None

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        logits = self.prefill_fn(ids)
        # the decode position lives on the device and is advanced there: building it from a
        # Python int every step is a blocking host-to-device copy, which on a GPU would wait
        # for the previous step and put the host's launch time into every step's latency
        self._pos_t = torch.tensor([ids.shape[1]], device=self.device)
        return logits.float()

    @torch.inference_mode()
    def decode(self, token: torch.Tensor) -> torch.Tensor:
        # contiguous: a strided slice would make a compiled decode step recompile
        token = token.to(self.device).reshape(-1, 1).contiguous()
        logits = self.decode_fn(token, self._decode_position())
        self._pos_t.add_(1)  # stream-ordered after the step that read it
        return logits.float()

    def _decode_position(self) -> torch.Tensor:
        """The position the next decode writes (a one-element tensor), set by prefill."""
        if self._pos_t is None:
            raise RuntimeError("decode() before prefill(): call reset() and prefill() first")
        return self._pos_t

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.forward_by_decode:
            return self._forward_token_by_token(ids)
        return self.model(ids.to(self.device)).float()

    def _forward_token_by_token(self, ids: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        # the longest cache so far is kept: a compiled step is specialised to its cache's
        # shape, so every window and task item up to that length reuses one graph
        self.reset(batch, max(length, self.model.max_len))
        self._pos_t = torch.zeros(1, dtype=torch.long, device=self.device)
        out = torch.empty(batch, length, self.vocab_size, device=self.device)
        ids = ids.to(self.device)
        for t in range(length):
            out[:, t] = self.decode(ids[:, t:t + 1].contiguous())
        self._pos_t = None  # the cache holds this sequence now: generation starts afresh
        return out

    def nbytes(self) -> int:
        # oneDNN-packed copies (CPU inference layout) held on top of dense weights; one whose
        # dense weight was dropped is counted as that weight (same bytes, held instead)
        return module_nbytes(self.model) + self.model.packed_nbytes()

    def decode_nbytes(self) -> int:
        # a step reads each projection once, from its packed copy or its dense weight
        return (module_nbytes(self.model)
                - gathered_embedding_nbytes(self.model.transformer, self.model.lm_head))

    def describe(self) -> dict:
        return {"backend": self.backend, "device": self.device,
                "dtype": _dtype_name(self.dtype), "notes": list(self.notes)}


class HFEngine(Engine):
    """Hugging Face `GPT2LMHeadModel` with the same weights: the peer in reports.

    Decode feeds the model's own cache back, as `generate()` does."""

    backend = "hf"

    def __init__(self, model: GPT, device: str = "cpu") -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        c = model.config
        hf_cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd,
                            n_layer=c.n_layer, n_head=c.n_head, layer_norm_epsilon=c.layer_norm_eps,
                            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, tie_word_embeddings=True)
        hf = GPT2LMHeadModel(hf_cfg)
        state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        missing, unexpected = hf.load_state_dict(state, strict=False)
        real_missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias",
                                                              "lm_head.weight"))]
        if real_missing or unexpected:
            raise RuntimeError(f"HF weight copy failed: missing {real_missing}, "
                               f"unexpected {unexpected}")
        hf.tie_weights()
        self.model = hf.to(device).eval()
        self.device = device
        self.vocab_size = c.vocab_size
        self.max_positions = c.n_positions
        self._past = None
        self._pos = 0
        params = inspect.signature(hf.forward).parameters
        self._keep_last = ({"logits_to_keep": 1} if "logits_to_keep" in params else
                           {"num_logits_to_keep": 1} if "num_logits_to_keep" in params else {})
        # transformers 5.24 renamed the cache argument and output `past_key_values` ->
        # `cache` (the old name warns, and goes in 5.40); use whichever this version has
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def reset(self, batch: int, max_len: int) -> None:
        self._past = None
        self._pos = 0

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        # logits_to_keep=1 is what HF's own generate() passes (num_logits_to_keep before 4.50)
        out = self.model(input_ids=ids.to(self.device), use_cache=True, **self._keep_last)
        self._past = out[self._cache_arg]
        self._pos = ids.shape[1]
        return out.logits[:, -1:].float()

    @torch.inference_mode()
    def decode(self, token: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=token.to(self.device).view(-1, 1),
                         **{self._cache_arg: self._past}, use_cache=True)
        self._past = out[self._cache_arg]
        self._pos += 1
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids.to(self.device), use_cache=False).logits.float()

    def nbytes(self) -> int:
        return module_nbytes(self.model)

    def decode_nbytes(self) -> int:
        return self.nbytes() - gathered_embedding_nbytes(self.model.transformer, self.model.lm_head)

    def describe(self) -> dict:
        import transformers

        return {"backend": self.backend, "device": self.device,
                "dtype": _dtype_name(next(self.model.parameters()).dtype),
                "notes": [f"transformers {transformers.__version__} GPT2LMHeadModel"]}
