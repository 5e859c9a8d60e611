"""`OrtEngine`: gpteval's Engine interface over an ONNX Runtime InferenceSession.

It runs the decode-step graph that `optimizers/onnx.py` exports (inputs `input_ids`
(B, T) and `past_{key,value}_{i}` (B, nh, past_len, hs); outputs `logits` (B, T, V) and
`present_{key,value}_{i}`), and the int8/int4 rewrites of it.  onnxruntime is imported
inside functions only.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from gpteval.engine import Engine

from .onnx_attention import TOTAL_INPUT

POSITIONS_INPUT = "logits_positions"  # (K,) int64: which new positions get logits


class OrtEngine(Engine):
    """The exported graph run by an ONNX Runtime InferenceSession.

    The KV cache lives in OrtValues kept where the provider computes them (IO binding), so a
    CUDA session keeps its cache on the GPU and a CPU session never copies it through numpy.
    Two graph forms (see optimizers/onnx.py): with a `total_sequence_length` input the caches
    are fixed-length buffers allocated by reset() and updated in place (each present output
    is bound to its past buffer); without it the present outputs, one entry longer each
    step, are fed back as the next past.
    """

    backend = "onnx"

    def __init__(self, model_path: Path, device: str, vocab_size: int, max_positions: int,
                 dtype: str = "float32", notes: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        self.device = device
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.dtype = dtype
        self.notes = list(notes or [])
        kind, _, index = device.partition(":")
        self._ort_device = "cuda" if kind == "cuda" else "cpu"
        self._device_id = int(index or 0) if kind == "cuda" else 0
        self.threads = torch.get_num_threads()
        so = self.session_options()
        if kind == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": self._device_id}),
                         "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        t0 = time.perf_counter()
        self.session = ort.InferenceSession(str(self.model_path), so, providers=providers)
        self.session_s = time.perf_counter() - t0
        self.provider = self.session.get_providers()[0]
        if kind == "cuda" and self.provider != "CUDAExecutionProvider":
            raise RuntimeError(f"onnxruntime could not start CUDAExecutionProvider for {device} "
                               f"(got {self.provider}); check onnxruntime-gpu and CUDA versions")
        inputs = self.session.get_inputs()
        self._past_names = [i.name for i in inputs if i.name.startswith("past_")]
        self._kv_shapes = [(i.shape[1], i.shape[3]) for i in inputs if i.name.startswith("past_")]
        self._output_names = [o.name for o in self.session.get_outputs()]
        self.static_cache = TOTAL_INPUT in {i.name for i in inputs}
        self._past: list = []
        self._pos = 0
        self._max_len = 0
        self._step = None  # the decode binding of a static-cache graph, see _decode_in_place

    def session_options(self):
        """The options every session of this engine runs with (tools/profile_decode.py adds
        profiling to the same ones)."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only; ORT warns about every unused initializer
        return so

    # -- the cache
    def _empty_past(self, batch: int, length: int = 0) -> list:
        """Zeroed caches: `length` entries for a static-cache graph, none otherwise."""
        import numpy as np
        from onnxruntime import OrtValue

        length = length if self.static_cache else 0
        return [OrtValue.ortvalue_from_numpy(np.zeros((batch, nh, length, hs), np.float32),
                                             self._ort_device, self._device_id)
                for nh, hs in self._kv_shapes]

    def reset(self, batch: int, max_len: int) -> None:
        if max_len > self.max_positions:
            raise ValueError(f"max_len {max_len} exceeds n_positions={self.max_positions}")
        self._past = self._empty_past(batch, max_len)
        self._step = None
        self._pos = 0
        self._max_len = max_len

    def _run(self, ids: torch.Tensor, past: list, total: int,
             last_only: bool = True) -> tuple[torch.Tensor, list]:
        """One graph call on `ids` after `past`; `total` = cached tokens after the call.
        Logits (B, 1, V) of the last new position, or (B, T, V) of all of them."""
        import numpy as np

        ids_np = _int64_numpy(ids)
        T = ids_np.shape[1]
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids_np)
        positions = [T - 1] if last_only else range(T)
        binding.bind_cpu_input(POSITIONS_INPUT, np.array(positions, np.int64))
        if self.static_cache:
            binding.bind_cpu_input(TOTAL_INPUT, np.array(total, np.int32))
            # logits first: get_outputs() returns outputs in the order they were bound
            binding.bind_output(self._output_names[0], self._ort_device, self._device_id)
        else:
            for name in self._output_names:
                binding.bind_output(name, self._ort_device, self._device_id)
        self._bind_cache(binding, past)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        logits = torch.from_numpy(outs[0].numpy())
        if self.device != "cpu":
            logits = logits.to(self.device)
        return logits.float(), (past if self.static_cache else outs[1:])

    def _bind_cache(self, binding, past: list) -> None:
        """Bind each past input; on a static-cache graph also each present output to the
        same buffer, so the graph updates the cache in place (present is past)."""
        for name, value in zip(self._past_names, past):
            binding.bind_ortvalue_input(name, value)
        if self.static_cache:
            for name, value in zip(self._output_names[1:], past):
                binding.bind_ortvalue_output(name, value)

    def _check_room(self, new: int) -> None:
        limit = self._max_len or self.max_positions
        if self._pos + new > limit:
            raise ValueError(f"{self._pos} cached + {new} new tokens exceed the cache length "
                             f"{limit}; call reset() with a larger max_len")

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        batch, T = ids.shape
        self._pos = 0
        self._check_room(T)
        if self.static_cache:
            if not self._past or self._past[0].shape()[0] != batch:  # no reset() for this batch
                self._past = self._empty_past(batch, self._max_len or self.max_positions)
                self._step = None
            past = self._past  # stale entries past T are masked out by total_sequence_length
        else:
            past = self._empty_past(batch)
        logits, self._past = self._run(ids, past, T)
        self._pos = T
        return logits

    def decode(self, token: torch.Tensor) -> torch.Tensor:
        self._check_room(1)
        if self.static_cache:
            logits = self._decode_in_place(token.reshape(-1, 1))
        else:
            logits, self._past = self._run(token.reshape(-1, 1), self._past, self._pos + 1)
        self._pos += 1
        return logits[:, -1, :]

    def _decode_in_place(self, token: torch.Tensor) -> torch.Tensor:
        """A decode step of a static-cache graph through one IO binding kept across steps.

        Every step binds the same caches, the same logits buffer and the same one-token
        inputs, so they are bound once (per reset) and only the token and the length are
        written before each run.  Rebuilding the binding every step (50 bind calls, ~140 µs
        on 2 CPU cores, and 25 fetched outputs) measured 3-4.5 % of an int8/int4 gpt2 decode
        step in a paired A/B."""
        import numpy as np
        from onnxruntime import OrtValue

        if self._step is None:
            batch = self._past[0].shape()[0]

            def value(array):
                return OrtValue.ortvalue_from_numpy(array, self._ort_device, self._device_id)

            ids, total = value(np.zeros((batch, 1), np.int64)), value(np.zeros((), np.int32))
            logits = OrtValue.ortvalue_from_shape_and_type((batch, 1, self.vocab_size), np.float32,
                                                           self._ort_device, self._device_id)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input("input_ids", ids)
            binding.bind_ortvalue_input(TOTAL_INPUT, total)
            binding.bind_ortvalue_input(POSITIONS_INPUT, value(np.zeros(1, np.int64)))
            self._bind_cache(binding, self._past)
            binding.bind_ortvalue_output(self._output_names[0], logits)
            self._step = (binding, ids, total, logits)
        binding, ids, total, logits = self._step
        ids.update_inplace(_int64_numpy(token))
        total.update_inplace(np.array(self._pos + 1, np.int32))
        self.session.run_with_iobinding(binding)
        # numpy() of a CPU OrtValue shares its memory, and the buffer is rewritten next step
        out = torch.from_numpy(logits.numpy().copy())
        return out if self.device == "cpu" else out.to(self.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: a prefill into a fresh cache, leaving the engine's alone."""
        batch, T = ids.shape
        if T > self.max_positions:
            raise ValueError(f"sequence of {T} tokens exceeds n_positions={self.max_positions}")
        return self._run(ids, self._empty_past(batch, T), T, last_only=False)[0]

    # -- what ran
    def nbytes(self) -> int:
        return initializer_nbytes(self.model_path) + self._cache_nbytes()

    def decode_nbytes(self) -> int:
        return initializer_nbytes(self.model_path, skip_gathered=True) + self._cache_nbytes()

    def _cache_nbytes(self) -> int:
        """Bytes of the static KV buffers this engine holds (counted like a PyTorch engine's
        static cache buffers, so rooflines compare); a Concat graph's growing cache is not a
        held buffer and counts nothing, as with the hf peer's dynamic cache."""
        if not self.static_cache:
            return 0
        return sum(4 * math.prod(v.shape()) for v in self._past)

    def artifact_files(self) -> list[str]:
        files = [self.model_path, self.model_path.with_name(self.model_path.name + ".data")]
        return [str(f) for f in files if f.exists()]

    def describe(self) -> dict:
        return {"backend": self.backend, "device": self.device, "dtype": self.dtype,
                "notes": self.notes + [(f"onnxruntime {_ort_version()} {self.provider}, graph "
                                       f"optimization ALL, {self.threads} intra-op "
                                       "threads")]}


def _int64_numpy(ids: torch.Tensor):
    """Token ids as the contiguous int64 host array ORT's input_ids takes."""
    return ids.detach().to("cpu", torch.int64).contiguous().numpy()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def initializer_nbytes(path: Path, skip_gathered: bool = False) -> int:
    """Bytes of the initializers (weights) of an ONNX file, external data included, without
    loading the weights.  skip_gathered leaves out tables that only feed Gather as its data
    (embeddings: a decode step reads one row of them)."""
    import numpy as np
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)
    gathered: set[str] = set()
    if skip_gathered:
        uses: dict[str, set[tuple[str, int]]] = {}
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                uses.setdefault(name, set()).add((node.op_type, i))
        gathered = {n for n, u in uses.items() if u and all(op == "Gather" and i == 0 for op, i in u)}
    total = 0
    for t in model.graph.initializer:
        if t.name in gathered:
            continue
        ext = {e.key: e.value for e in t.external_data}
        if "length" in ext:
            total += int(ext["length"])
        elif t.raw_data:
            total += len(t.raw_data)
        else:
            total += math.prod(t.dims) * np.dtype(tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return total
