"""Which int8 format a CPU runs fastest without losing accuracy, from its feature flags.

The choice was measured with ``bench/bench_int8_formats.py`` (docs/int8.md): ONNX Runtime's int8
kernels differ per instruction set, and a format that is 4x faster on one CPU is slower than fp32 on
another. This module only encodes that measurement; it runs nothing.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

QuantFormatName = Literal["qoperator", "qdq"]
IntType = Literal["u8", "s8"]

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class QuantMethod:
    """How onnxruntime.quantization.quantize_static is called (static, MinMax-calibrated)."""

    format: QuantFormatName  # QOperator: fused QLinearConv nodes; QDQ: Quantize/DequantizeLinear pairs
    activations: IntType
    weights: IntType
    per_channel: bool  # one weight scale per output channel, or one per tensor
    reduce_range: bool = False  # 7-bit weights: no u8 x s8 pair-sum saturation on CPUs without VNNI

    @property
    def name(self) -> str:
        """A short, file-name-safe tag, e.g. ``qop-u8s8-pc``; the cached file's name holds it."""
        fmt = "qop" if self.format == "qoperator" else "qdq"
        parts = [fmt, f"{self.activations}{self.weights}", "pc" if self.per_channel else "pt"]
        if self.reduce_range:
            parts.append("rr")
        return "-".join(parts)

    def describe(self) -> str:
        """For people: ``QOperator U8S8 per-channel``."""
        fmt = "QOperator" if self.format == "qoperator" else "QDQ"
        types = f"{self.activations}{self.weights}".upper()
        text = f"{fmt} {types} {'per-channel' if self.per_channel else 'per-tensor'}"
        return text + (", 7-bit weights (reduce_range)" if self.reduce_range else "")

    def as_record(self) -> dict[str, object]:
        """Every field, for the cache record: a method that differs in any field makes another file."""
        return {"name": self.name, "format": self.format, "activations": self.activations,
                "weights": self.weights, "per_channel": self.per_channel, "reduce_range": self.reduce_range}


QOP_U8S8_PER_CHANNEL = QuantMethod("qoperator", "u8", "s8", per_channel=True)
QDQ_U8S8_PER_TENSOR = QuantMethod("qdq", "u8", "s8", per_channel=False)
QDQ_U8S8_PER_CHANNEL = QuantMethod("qdq", "u8", "s8", per_channel=True)
QDQ_S8S8_PER_CHANNEL = QuantMethod("qdq", "s8", "s8", per_channel=True)
QOP_U8S8_PER_CHANNEL_7BIT = replace(QOP_U8S8_PER_CHANNEL, reduce_range=True)
QDQ_U8S8_PER_TENSOR_7BIT = replace(QDQ_U8S8_PER_TENSOR, reduce_range=True)

# Everything bench/bench_int8_formats.py compares.
ALL_METHODS: tuple[QuantMethod, ...] = (
    QOP_U8S8_PER_CHANNEL,
    QDQ_U8S8_PER_TENSOR,
    QDQ_U8S8_PER_CHANNEL,
    QDQ_S8S8_PER_CHANNEL,
    QOP_U8S8_PER_CHANNEL_7BIT,
    QDQ_U8S8_PER_TENSOR_7BIT,
)

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
AMX_FLAG = "amx_int8"


def method_for_flags(flags: frozenset[str] | None) -> QuantMethod:
    """The int8 method for a CPU with these /proc/cpuinfo flags (None: flags unknown).

    - AMX (Sapphire Rapids and later): QDQ U8S8 per-tensor was fastest (4.3x fp32 at 2 threads);
      ONNX Runtime's AMX kernels take the QDQ graph, QOperator's QLinearConv does not use them as well.
    - VNNI without AMX (Cascade Lake, Ice Lake, Zen 4): QOperator U8S8 per-channel (3.7x on Zen 4).
    - anything else (AVX2 or AVX-512 without VNNI, Arm, unknown): U8S8 without VNNI multiplies with
      vpmaddubsw, whose 16-bit sum of two u8 x s8 products saturates for 8-bit weights; 7-bit weights
      (reduce_range) cannot overflow it. Same format as the VNNI path otherwise, so it is exact there too.
    """
    flags = flags or frozenset()
    if AMX_FLAG in flags:
        return QDQ_U8S8_PER_TENSOR
    if flags & VNNI_FLAGS:
        return QOP_U8S8_PER_CHANNEL
    return QOP_U8S8_PER_CHANNEL_7BIT


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The first CPU's feature flags from /proc/cpuinfo (x86 Linux); None where there is no such file."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()  # Linux, but not x86 (Arm lists "Features"): no VNNI, so the safe method


def method_for_this_cpu() -> QuantMethod:
    return method_for_flags(cpu_flags())


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name, for benchmark reports."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
