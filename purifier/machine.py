"""The CPU a measurement ran on: its model name and matrix-unit flags, recorded beside speed figures.

Speed ratios such as bf16 over fp32 depend on these units (AMX tiles, or AVX-512 bf16 only), and the
machines this project is measured on differ between runs.
"""

from __future__ import annotations

from pathlib import Path

MATRIX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f")


def cpu_model_and_matrix_flags() -> tuple[str, dict[str, bool]]:
    """The CPU's model name and which of its matrix-unit flags /proc/cpuinfo lists ("unknown CPU" and none without it)."""
    model, flags = "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags.update(value.split())
    return model, {flag: flag in flags for flag in MATRIX_FLAGS}
