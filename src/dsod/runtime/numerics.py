"""The numerics a training run uses, decided at run time from the device it finds.

- CUDA: float16 autocast + GradScaler (``amp``) and channels-last (tensor cores want NHWC).
- CPU: bfloat16 autocast only where oneDNN's bf16 path is native (AMX, AVX512-BF16): on AVX2 CPUs
  bf16 is emulated and slower than fp32. Channels-last where it measured faster (``CHANNELS_LAST_CPU``).
- The loss, matching and hard-negative mining always run in fp32 (the trainer casts the head outputs).

``bf16=`` / ``channels_last=`` (True/False) override the decision; ``None`` means decide.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .hardware import cpu_summary, native_bf16

# Channels-last on CPU: measured per CPU kind with `dsod bench` (training section, docs/PERFORMANCE.md):
# faster on an AVX-512 Xeon (4.6 -> 3.0 s per dsod-tiny-bccd step) and on AVX2.
CHANNELS_LAST_CPU = True


@dataclass(frozen=True)
class Numerics:
    amp: bool  # float16 autocast + GradScaler (CUDA)
    bf16: bool  # bfloat16 autocast
    channels_last: bool
    reason: str

    def describe(self) -> str:
        dtype = "fp16 autocast (AMP)" if self.amp else "bf16 autocast" if self.bf16 else "fp32"
        layout = "channels-last" if self.channels_last else "NCHW"
        return (f"numerics: {dtype}, {layout}; loss and matching in fp32 ({self.reason}; "
                f"override with bf16=true|false channels_last=true|false)")


def decide_numerics(device: torch.device, amp: bool = True, bf16: Optional[bool] = None,
                    channels_last: Optional[bool] = None) -> Numerics:
    if device.type == "cuda":
        use_bf16 = bool(bf16)
        return Numerics(amp=amp and not use_bf16, bf16=use_bf16,
                        channels_last=True if channels_last is None else bool(channels_last),
                        reason=f"CUDA {torch.cuda.get_device_name(device)}")
    cpu = cpu_summary()
    native = native_bf16()
    if bf16 is None:
        use_bf16 = native
        why = "native bf16 (AMX/AVX512-BF16)" if native else "no native bf16 on this CPU: it would be emulated"
    else:
        use_bf16 = bool(bf16)
        why = "bf16 as asked" if use_bf16 else "fp32 as asked"
    cl = CHANNELS_LAST_CPU if channels_last is None else bool(channels_last)
    return Numerics(amp=False, bf16=use_bf16, channels_last=cl, reason=f"{cpu['model']}: {why}")
