"""What this CPU can do, read from ``/proc/cpuinfo`` (Linux x86): the one place the rest of the
package asks. The fast paths differ by CPU (docs/PERFORMANCE.md): bf16 only pays where oneDNN has a
native bf16 path (AMX, AVX512-BF16; on AVX2 it is emulated and slower), int8 only where there are
int8 dot products (VNNI, AMX)."""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Dict, List, Optional

INT8_BF16_ISA = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")
NATIVE_BF16_ISA = ("amx_bf16", "avx512_bf16")


def _cpuinfo() -> Optional[str]:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_flags(cpuinfo: Optional[str] = None) -> Optional[List[str]]:
    """The first ``flags`` line of ``/proc/cpuinfo``; None where there is none (not Linux x86)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    if text is None:
        return None
    return next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), None)


def int8_bf16_isa(cpuinfo: Optional[str] = None) -> Optional[List[str]]:
    """The CPU's int8 dot-product / bf16 instruction sets (``INT8_BF16_ISA``), or None where that is
    unknown. Without any of them int8 and bf16 cannot beat fp32 on the convolutions."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else [f for f in INT8_BF16_ISA if f in flags]


def native_bf16(cpuinfo: Optional[str] = None) -> bool:
    """Whether oneDNN runs bf16 convolutions natively here (AMX or AVX512-BF16), unless an
    ``ONEDNN_MAX_CPU_ISA`` cap below AVX-512 says otherwise (it imitates an older CPU's kernels)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and not cap.startswith(("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10", "ALL")):
        return False
    isa = int8_bf16_isa(cpuinfo) or []
    return any(f in isa for f in NATIVE_BF16_ISA)


@functools.lru_cache(maxsize=1)
def cpu_summary() -> Dict[str, object]:
    """Model name, cores and the flags that decide the fast paths (for logs and bench JSON)."""
    text = _cpuinfo() or ""
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                platform.processor() or platform.machine())
    flags = cpu_flags(text) or []
    wanted = ("avx2", "avx512f", *INT8_BF16_ISA)
    return {"model": name, "cores": os.cpu_count(), "isa": [f for f in wanted if f in flags]}


def cpu_id() -> str:
    """One line that tells CPU kinds apart (the model name alone does not: "AMD EPYC" is every Zen):
    model name, family/model numbers and the fast-path flags. Keys speed measurements per CPU."""
    text = _cpuinfo() or ""

    def field(key: str) -> str:
        return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.split(":")[0].strip() == key), "?")

    s = cpu_summary()
    return f"{s['model']} (family {field('cpu family')} model {field('model')}; {'+'.join(s['isa']) or 'no AVX2'})"
