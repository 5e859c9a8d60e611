"""The pass registry and the pipeline parser.

A variant is a pipeline of passes written as a string: `prune-structured:0.3+int8-dynamic`,
`onnx+ort-int8`.  Names map to "module:Class" strings so a pass's module is imported only
when the pass is asked for (after lm-eval's registry).  Adding a pass = one class + one
line here; the parametrized pass tests pick it up.
"""

from __future__ import annotations

import importlib

from gpteval.errors import did_you_mean

from .base import Pass, PassContext, PassError, inference_layout

REGISTRY: dict[str, str] = {
    "eager": "optimizers.base:Eager",
    "hf": "optimizers.base:HFPeer",
    "fp16": "optimizers.dtype:FP16",
    "bf16": "optimizers.dtype:BF16",
    "int8-dynamic": "optimizers.quantize:Int8Dynamic",
    "int8-weight-only": "optimizers.quantize:Int8WeightOnly",
    "int4-weight-only": "optimizers.quantize:Int4WeightOnly",
    "fp8": "optimizers.quantize:FP8",
    "prune-magnitude": "optimizers.prune:PruneMagnitude",
    "prune-structured": "optimizers.prune:PruneStructured",
    "prune-2to4": "optimizers.prune:Prune2to4",
    "prune-wanda": "optimizers.prune:PruneWanda",
    "finetune": "optimizers.finetune:Finetune",
    "onnx": "optimizers.onnx:OnnxExport",
    "ort-int8": "optimizers.onnx:OrtInt8",
    "ort-int4": "optimizers.onnx:OrtInt4",
    "compile": "optimizers.compile:Compile",
    "fused-decode": "optimizers.fused_decode:FusedDecode",
    "tensorrt": "optimizers.tensorrt:TensorRT",
}



def _register_plugins() -> None:
    """Passes from outside gpteval: GPTEVAL_PASSES="name=module:Class,..." adds them to the
    registry in this process and in every variant process the harness starts."""
    import os

    for entry in filter(None, (e.strip() for e in os.environ.get("GPTEVAL_PASSES", "").split(","))):
        name, _, target = entry.partition("=")
        if not name or ":" not in target:
            raise PassError(f"GPTEVAL_PASSES entry '{entry}' must look like name=module:Class")
        REGISTRY[name.strip()] = target.strip()


_register_plugins()

# backend every pipeline starts from
START_BACKEND = "torch"


def pass_class(name: str) -> type[Pass]:
    if name not in REGISTRY:
        raise PassError(f"unknown pass '{name}'.{did_you_mean(name, REGISTRY)} "
                        "Run `gpteval passes` to list them.")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def parse_pipeline(variant: str) -> list[Pass]:
    """Turn 'a:1+b' into pass objects; reject unknown names, bad parameters and orders
    that cannot work, with a message that says the valid form."""
    text = variant.strip()
    if not text:
        raise PassError("empty variant; write pass names joined by '+', e.g. 'int8-dynamic'")
    passes: list[Pass] = []
    for part in text.split("+"):
        part = part.strip()
        if not part:
            raise PassError(f"variant '{variant}' has an empty step; join pass names with "
                            "single '+' signs")
        name, _, arg = part.partition(":")
        cls = pass_class(name.strip())
        passes.append(cls(arg.strip() if _ else None))
    check_order(variant, passes)
    return passes


def check_order(variant: str, passes: list[Pass]) -> None:
    backend = START_BACKEND
    seen: set[str] = set()
    quantized_by: str | None = None
    for p in passes:
        if p.name in seen and p.name != "finetune":
            raise PassError(f"variant '{variant}' applies '{p.name}' twice; keep one")
        seen.add(p.name)
        if p.float_weights_only and quantized_by:
            raise PassError(f"variant '{variant}': '{p.name}' needs plain float weights, and "
                            f"'{quantized_by}' before it quantizes them; {p.float_weights_fix}")
        if p.quantizes:
            quantized_by = quantized_by or p.spec
        if backend not in p.requires:
            raise PassError(_order_message(variant, p, backend))
        backend = p.produces or backend


def _order_message(variant: str, p: Pass, backend: str) -> str:
    if "onnx" in p.requires and backend == "torch":
        return (f"variant '{variant}': '{p.name}' works on an exported ONNX model; put "
                f"'onnx' before it, e.g. 'onnx+{p.name}'")
    if backend == "onnx" and p.quantizes:
        return (f"variant '{variant}': '{p.name}' quantizes PyTorch weights and cannot follow "
                "'onnx'; quantize the exported model with 'onnx+ort-int8' or 'onnx+ort-int4'")
    if backend == "onnx":
        return (f"variant '{variant}': '{p.name}' is a PyTorch pass and cannot follow a pass "
                f"that leaves a {backend} engine; put '{p.name}' first, e.g. "
                f"'{p.name}+...+onnx'")
    if backend != "torch":  # compiled, fused, tensorrt, hf: the end of a pipeline
        return (f"variant '{variant}': '{p.name}' cannot follow a pass that leaves a {backend} "
                f"engine, which takes no further passes; put '{p.name}' before that pass if "
                "it changes the PyTorch weights (pruning), or keep one of the two")
    return f"variant '{variant}': '{p.name}' cannot run on a {backend} engine"


def all_passes() -> list[type[Pass]]:
    return [pass_class(n) for n in REGISTRY]


def run_pipeline(passes: list[Pass], engine, ctx: PassContext, layout: bool = False):
    """Apply the passes in order.  `layout=True` also gives the result the inference layout
    the harness measures every variant in (base.inference_layout): what tools and
    benchmarks want, so they time what `gpteval run` times."""
    for p in passes:
        engine = p.apply(engine, ctx)
    return inference_layout(engine) if layout else engine


__all__ = [
    "REGISTRY",
    "Pass",
    "PassContext",
    "PassError",
    "all_passes",
    "parse_pipeline",
    "pass_class",
    "run_pipeline",
]
