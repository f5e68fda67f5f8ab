"""The model's fp32 linear layers computed by oneDNN while the CPU sampler runs, where that is faster.

    from east.sampling.onednn import onednn_linears, resolve_gemm
    with torch.inference_mode(), onednn_linears(model):   # east.sampling.hf.sample does this on CPU
        logits = model(input_ids).logits
    resolve_gemm(model, "auto")   # "onednn" or "torch": whichever ran the model's own products faster here

Why: torch's fp32 matmul on CPU calls MKL, which on AMD processors runs no faster than with its
instructions capped at AVX2 (MKL_ENABLE_INSTRUCTIONS=AVX2 changes nothing here), while oneDNN (also
inside torch) runs its AVX-512 kernels. On this project's AMD EPYC machine, one thread, a
(64 x 512) @ (512 x 1536) product runs at 107 GFLOP/s through `torch.matmul` and at 257 GFLOP/s through
oneDNN, both fp32 with errors against float64 of the same order (about 1e-4 on outputs of size 20).
Decoding spends most of its time in these products.

- Only exact `torch.nn.Linear` modules with fp32 weights on CPU are switched (a LoRA layer's base and
  adapter layers are plain Linears); modules that already carry their own `forward` (hooks) are left as
  they are. Each switched module's forward is restored when the block exits, also on error.
- Weights are copied into oneDNN's blocked layout while their total stays within `PACK_LIMIT_BYTES`;
  beyond that the layers read the plain weights (no extra memory, about 15% slower at 64 rows).
  For two or more rows both give bit-identical results.
- A row's result does not depend on the other rows of the product from two rows up (MKL's: from four
  rows up), so the sampler's output depends on the batch plan no more than before.
- If this torch has no oneDNN, or its result disagrees with `torch.nn.functional.linear` on a check
  product, nothing is switched.

The packed copies are made per call, so weights trained between two calls are always current.

Which is faster depends on the processor, not its brand: on an Intel Xeon with AMX (2026-12-01) torch's
own matmul ran a 2048^2 product at 151 GFLOP/s against oneDNN's 145, and the sampler was faster without the
switch. `resolve_gemm(model, "auto")` (`sampling.gemm: auto`) times both on the model's own layer shapes
at first use, in CPU time so that other processes on the machine do not decide the choice, and keeps
oneDNN (today's default, whose samples existing runs hold) unless torch's matmul is more than
`AUTO_MARGIN` faster.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Extra memory allowed for packed copies of the weights (a 250M-parameter fp32 model).
PACK_LIMIT_BYTES = 1 << 30
# oneDNN picks its blocked weight layout for this many rows. Of the hints 1, 16, 64, 256 and 4096, this
# one measured within 10% of the fastest at 8 rows and within 3% from 64 to 4096 rows.
PACK_ROWS_HINT = 64

GEMMS = ("onednn", "torch", "auto")
# `auto` leaves the default (oneDNN) only for a path at least this much faster: the timing of a
# shared machine wobbles by a few percent, and a flip-flopping choice would change samples' rounding
# from run to run for no real gain.
AUTO_MARGIN = 0.05
# Rows of the timed products: the decode batch's order of magnitude (the row count oneDNN packs for).
AUTO_ROWS = PACK_ROWS_HINT
# CPU seconds each path gets per layer shape and round (3 rounds, alternating; the fastest round counts).
AUTO_SECONDS = 0.02

log = logging.getLogger(__name__)


@functools.cache
def available() -> bool:
    """Whether this torch has oneDNN's linear op and it agrees with `torch.nn.functional.linear`."""
    if not torch.backends.mkldnn.is_available():
        return False
    layer = torch.nn.utils.skip_init(torch.nn.Linear, 40, 48)  # its own generator: the global RNG stays as it is
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 40, generator=generator)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        try:
            out = onednn_forward(layer, pack=True)(x)
        except (AttributeError, RuntimeError):
            return False
        return bool(torch.allclose(out, layer(x), rtol=1e-5, atol=1e-5))


def switchable(module: torch.nn.Module) -> bool:
    return (
        type(module) is torch.nn.Linear
        and "forward" not in module.__dict__
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
    )


@contextmanager
def onednn_linears(model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, the model's fp32 CPU linear layers run through oneDNN; yields how many do."""
    layers = [m for m in model.modules() if switchable(m)] if enabled and available() else []
    pack = sum(m.weight.numel() * 4 for m in layers) <= PACK_LIMIT_BYTES
    try:
        for module in layers:
            module.forward = onednn_forward(module, pack)
        yield len(layers)
    finally:
        for module in layers:
            module.__dict__.pop("forward", None)


def onednn_forward(module: torch.nn.Linear, pack: bool):
    weight = module.weight.detach()
    if pack:
        weight = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)
    bias = None if module.bias is None else module.bias.detach()
    features = module.out_features

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.requires_grad:  # not the sampler's inference call: the stock path
            return torch.nn.functional.linear(x, module.weight, module.bias)
        rows = x.reshape(-1, x.shape[-1])
        count, padded = len(rows), padded_rows(len(rows))
        if padded > count:
            rows = torch.cat([rows, rows.new_zeros(padded - count, rows.shape[1])])
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
        return out[:count].view(*x.shape[:-1], features)

    return forward


def padded_rows(rows: int) -> int:
    """`rows` rounded up to one of 8 sizes per octave (exact below 16).

    oneDNN compiles and keeps a kernel per product shape, about 0.6 MB and 0.2 ms each, and decoding
    changes its row count nearly every step: rounded, a sampling run needs a few dozen shapes per layer
    shape instead of hundreds, for at most 1/8 more rows (zeros, whose results are dropped; a row's
    result does not depend on the others).
    """
    step = 1 << max(0, rows.bit_length() - 4)
    return -(-rows // step) * step


def resolve_gemm(model: torch.nn.Module, gemm: str) -> str:
    """"onednn" or "torch": `gemm` itself, or for "auto" the path that ran this model's layer shapes faster
    here (oneDNN when there is nothing to switch, or when torch's matmul is not clearly faster)."""
    if gemm not in GEMMS:
        raise ValueError(f"sampling.gemm must be one of {', '.join(GEMMS)}, got {gemm!r}")
    if gemm != "auto":
        return gemm
    shapes = layer_shapes(model)
    if not shapes or not available():
        return "onednn"  # nothing would be switched: the choice changes nothing
    key = (tuple(sorted(shapes.items())), torch.get_num_threads())
    if key not in _CHOSEN:
        seconds = gemm_seconds(shapes)
        _CHOSEN[key] = faster_gemm(seconds)
        log.info("sampling.gemm auto: %s (CPU seconds per decode-sized pass over the linear layers: oneDNN %.2e, "
                 "torch matmul %.2e; %d threads)", _CHOSEN[key], seconds["onednn"], seconds["torch"], key[1])
    return _CHOSEN[key]


_CHOSEN: dict[tuple, str] = {}  # per process: the layer shapes (and thread count) already timed


def faster_gemm(seconds: dict[str, float]) -> str:
    """torch's matmul only if it beats oneDNN by more than AUTO_MARGIN."""
    return "torch" if seconds["torch"] * (1 + AUTO_MARGIN) < seconds["onednn"] else "onednn"


def layer_shapes(model: torch.nn.Module) -> dict[tuple[int, int, bool], int]:
    """(in features, out features, has bias) -> how many switchable layers have that shape."""
    shapes: dict[tuple[int, int, bool], int] = {}
    for m in model.modules():
        if switchable(m):
            shape = (m.in_features, m.out_features, m.bias is not None)
            shapes[shape] = shapes.get(shape, 0) + 1
    return shapes


def gemm_seconds(shapes: dict[tuple[int, int, bool], int], rows: int = AUTO_ROWS) -> dict[str, float]:
    """CPU seconds of one pass over layers of these shapes (count each) at `rows` rows, per path.

    Random weights of the same shapes: the time of a product does not depend on the values. The global
    RNG is left as it was (its own generator), so timing does not change what is sampled after."""
    generator = torch.Generator().manual_seed(0)
    total = {"onednn": 0.0, "torch": 0.0}
    with torch.inference_mode():
        for (features_in, features_out, bias), count in shapes.items():
            layer = torch.nn.utils.skip_init(torch.nn.Linear, features_in, features_out, bias=bias)
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
            x = torch.randn(rows, features_in, generator=generator)
            paths = {"onednn": onednn_forward(layer, pack=True), "torch": layer.forward}
            best = {name: float("inf") for name in paths}
            for _ in range(3):  # alternating rounds: a burst of load elsewhere hits both
                for name, path in paths.items():
                    best[name] = min(best[name], seconds_per_call(path, x))
            for name in total:
                total[name] += count * best[name]
    return total


def seconds_per_call(fn, x: torch.Tensor) -> float:
    """CPU seconds of one call, from as many calls as fit in about AUTO_SECONDS (after one warm-up)."""
    fn(x)
    calls, start = 0, time.process_time()
    while True:
        fn(x)
        calls += 1
        spent = time.process_time() - start
        if spent >= AUTO_SECONDS:
            return spent / calls
