"""Which floating-point precision the models compute in: `precision: default | fp32 | bf16 | auto` of a run config.

    from east.precision import resolve_precision
    resolve_precision("auto")   # "bf16" on a CUDA device with bf16 or a CPU with AMX / avx512_bf16, else "fp32"

- fp32: sampling, evaluation and training in float32, exactly as before this setting existed on CPU.
- bf16: sampling and evaluation load the model in bfloat16 (its matmuls run in bf16, the sampler draws
  from fp32 logits); training keeps fp32 master weights and runs forward and backward under bf16
  autocast (transformers' `bf16=True`, on CPU with `use_cpu=True`), as GPU users train.
- default (the config's default): what east did before the setting existed, bf16 on a CUDA device that has
  it and fp32 on CPU, so that existing run directories keep their samples and stage keys on any machine.
- auto: bf16 only where the hardware computes it natively. A CPU without AMX or avx512_bf16 (this
  project's AMD EPYC Zen 3) emulates bf16 products at a few GFLOP/s, far below its fp32 rate, so there
  auto is fp32; on a CPU with avx512_bf16 (AMD Zen 4) or AMX (Intel Sapphire Rapids on) it is bf16, which
  changes results within bf16's rounding (benchmarks/precision.py). On CUDA, auto is bf16 where the
  device supports it, as default is.

The CPU's flags come from /proc/cpuinfo (Linux); where it cannot be read, auto stays fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

PRECISIONS = ("default", "fp32", "bf16", "auto")
# Any of these in the CPU flags means bf16 products run on matrix units or native bf16 dot products.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_fields(cpuinfo: Path = CPUINFO) -> dict[str, str] | None:
    """The first processor's fields from /proc/cpuinfo ('model name', 'flags', ...); None where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def flags_of(fields: dict[str, str] | None) -> set[str]:
    return set((fields or {}).get("flags", "").split())


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The first processor's flags from /proc/cpuinfo (empty where there is none)."""
    return flags_of(cpu_fields(cpuinfo))


def cpu_description(cpuinfo: Path = CPUINFO) -> str:
    """The processor as /proc/cpuinfo names it, with family and model (one brand name covers several designs) and
    whether it has native bf16: what every benchmark prints beside its numbers."""
    fields = cpu_fields(cpuinfo)
    if fields is None:
        return "processor unknown"
    return (f"{fields.get('model name', '?')} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, "
            f"native bf16: {'yes' if cpu_has_native_bf16(flags_of(fields)) else 'no'}")


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    return any(flag in (cpu_flags() if flags is None else flags) for flag in NATIVE_BF16_FLAGS)


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str) -> str:
    """"fp32" or "bf16" for a `precision` setting (see the module docstring for auto)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "default":
        return previous_default()
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if cuda_has_bf16() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def previous_default() -> str:
    """The precision the project used before this setting: bf16 on a CUDA device with bf16, fp32 elsewhere.

    Stage keys name the precision only when it differs from this, so run directories made before stay valid."""
    return "bf16" if cuda_has_bf16() else "fp32"


def model_dtype(precision: str) -> str:
    """The `model.dtype` a resolved precision loads models in."""
    return {"fp32": "float32", "bf16": "bfloat16"}[precision]
