"""Where a fit runs: the device a backend asks for, and whether it multiplies bfloat16 natively."""

from __future__ import annotations

from ..errors import MtbenchError


def on_gpu(backend: str) -> bool:
    """Whether a ridge backend (one of :data:`mtbench.settings.BACKENDS`) fits on the CUDA GPU."""
    return backend.endswith("_cuda")


def check_device(backend: str, device: str = "cpu") -> str:
    """The device a fit with ``backend`` runs on; one line when it is a GPU that torch does not see.

    The runner calls it before extraction, so a ``_cuda`` backend on a machine without a GPU
    fails at once, not after minutes of feature extraction.
    """
    import torch

    device = "cuda" if on_gpu(backend) else device
    if device.startswith("cuda") and not torch.cuda.is_available():
        fix = f"backend {backend.removesuffix('_cuda')}" if on_gpu(backend) else "device cpu"
        raise MtbenchError(f"backend {backend} / device {device} asked for, but torch sees no CUDA GPU; use {fix}")
    return device


def effective_precision(precision: str, device: str = "cpu") -> str:
    """The precision a fit really uses: ``mixed`` falls back to ``float32`` without native bfloat16."""
    import torch

    if precision == "mixed" and not fast_bfloat16(torch.device(device)):
        return "float32"
    return precision


def fast_bfloat16(dev) -> bool:
    """Whether ``dev`` multiplies bfloat16 matrices natively (faster than float32)."""
    import torch

    if dev.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3
            return torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # older torch: no way to tell, stay in float32
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
