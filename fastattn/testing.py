"""The tolerance rule every fastattn kernel is held to, shared by the test suite and
``fastattn check``.

A kernel's error against a float64 reference may be at most ``factor`` times the error of the
same-precision PyTorch reference against float64, plus a small per-dtype absolute term
(flash-attention's rule): ``factor`` is 2 for forward outputs and 3 for gradients.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

# dtype -> absolute slack added to factor x (same-precision reference error)
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
FWD_FACTOR = 2.0
GRAD_FACTOR = 3.0


@dataclasses.dataclass
class Comparison:
    """``error`` (max |out - float64 reference|) against ``bound``; ``message`` says where."""
    name: str
    error: float
    bound: float
    reference_error: float
    message: str

    @property
    def ok(self) -> bool:
        return self.error <= self.bound


def compare(out: torch.Tensor, ref_hp: torch.Tensor, ref_lp: torch.Tensor, *,
            factor: float = FWD_FACTOR, atol: Optional[float] = None,
            name: str = "out") -> Comparison:
    """``out`` (kernel) vs ``ref_hp`` (float64 oracle), bounded by ``ref_lp``'s own error.

    Non-finite values where the reference is finite count as an infinite error; a shape
    mismatch raises ValueError."""
    if out.shape != ref_hp.shape:
        raise ValueError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref_hp.shape)}")
    atol = ATOL.get(out.dtype, 1e-5) if atol is None else atol
    out64, hp = out.detach().double().cpu(), ref_hp.detach().double().cpu()
    lp = ref_lp.detach().double().cpu()
    finite = torch.isfinite(hp)
    bad_nan = finite & ~torch.isfinite(out64)
    ref_err = torch.where(finite & torch.isfinite(lp), (lp - hp).abs(), torch.zeros_like(hp))
    ref_max = ref_err.max().item() if ref_err.numel() else 0.0
    bound = factor * ref_max + atol
    if bad_nan.any():
        idx = bad_nan.nonzero()[0].tolist()
        return Comparison(name, float("inf"), bound, ref_max,
                          f"{name}: {int(bad_nan.sum())} non-finite values where the reference "
                          f"is finite, first at {idx}: {out64[tuple(idx)].item()}")
    err = torch.where(finite, (out64 - hp).abs(), torch.zeros_like(hp))
    if err.numel() == 0:
        return Comparison(name, 0.0, bound, ref_max, f"{name}: empty")
    worst = err.max().item()
    idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    message = (f"{name}: max error {worst:.3e} {'<=' if worst <= bound else '>'} bound "
               f"{bound:.3e} ({factor} x reference error {ref_max:.3e} + atol {atol:.1e})")
    if worst > bound:
        message += (f"; {int((err > bound).sum())}/{err.numel()} elements over, worst at {idx}: "
                    f"got {out64[idx].item():.6g}, expected {hp[idx].item():.6g}")
    return Comparison(name, worst, bound, ref_max, message)
