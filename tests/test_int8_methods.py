"""The int8 method chosen from CPU flags (docs/int8.md), and reading the flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.quantization.methods import (
    ALL_METHODS,
    QDQ_U8S8_PER_TENSOR,
    QOP_U8S8_PER_CHANNEL,
    QOP_U8S8_PER_CHANNEL_7BIT,
    QuantMethod,
    cpu_flags,
    method_for_flags,
)

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8"
ZEN4 = "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16"
ALDER_LAKE = "fpu sse2 avx2 avx_vnni"
SKYLAKE_SERVER = "fpu sse2 avx2 avx512f avx512bw avx512vl"
HASWELL = "fpu sse2 avx avx2 fma"


@pytest.mark.parametrize(("flags", "method"), [
    (SAPPHIRE_RAPIDS, QDQ_U8S8_PER_TENSOR),  # AMX, even though it has VNNI too
    (ZEN4, QOP_U8S8_PER_CHANNEL),
    (ALDER_LAKE, QOP_U8S8_PER_CHANNEL),  # AVX-VNNI (256-bit) counts as VNNI
    (SKYLAKE_SERVER, QOP_U8S8_PER_CHANNEL_7BIT),  # AVX-512 without VNNI saturates 8-bit weights
    (HASWELL, QOP_U8S8_PER_CHANNEL_7BIT),
    ("", QOP_U8S8_PER_CHANNEL_7BIT),  # Arm: /proc/cpuinfo has no x86 flags
])
def test_method_for_flags(flags: str, method: QuantMethod) -> None:
    assert method_for_flags(frozenset(flags.split())) == method


def test_unknown_flags_get_the_safe_method() -> None:
    assert method_for_flags(None) == QOP_U8S8_PER_CHANNEL_7BIT
    assert QOP_U8S8_PER_CHANNEL_7BIT.reduce_range


def test_cpu_flags_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_vnni\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx2 avx512_vnni\n", encoding="utf-8")
    assert cpu_flags(x86) == frozenset({"fpu", "avx2", "avx512_vnni"})
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n", encoding="utf-8")
    assert cpu_flags(arm) == frozenset()
    assert cpu_flags(tmp_path / "missing") is None  # not Linux


def test_method_names_are_distinct_and_safe_in_file_names() -> None:
    names = [m.name for m in ALL_METHODS]
    assert len(set(names)) == len(names)
    assert all(name.replace("-", "").isalnum() for name in names)
    assert QOP_U8S8_PER_CHANNEL.name == "qop-u8s8-pc" and QDQ_U8S8_PER_TENSOR.name == "qdq-u8s8-pt"
    assert QOP_U8S8_PER_CHANNEL_7BIT.name == "qop-u8s8-pc-rr"
