"""Shared test helpers: the device under test, the tolerance table and a verbose comparison.

Tolerance rule (flash-attention's): the kernel's error against a float64 reference may be at
most FACTOR times the error of the same-precision PyTorch reference against float64, plus a
small per-dtype absolute term.  FACTOR is 2 for forward outputs and 3 for gradients.
"""
import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")

# dtype -> absolute slack added to FACTOR x (same-precision reference error)
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
FWD_FACTOR = 2.0
GRAD_FACTOR = 3.0

INTERPRETER_BF16 = "bf16 tl.dot is wrong in the Triton interpreter: bf16 runs on CUDA only"
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16",
                 marks=pytest.mark.skipif(not CUDA, reason=INTERPRETER_BF16)),
]


def assert_close_to_reference(out, ref_hp, ref_lp, *, factor=FWD_FACTOR, atol=None, name="out"):
    """``out`` (kernel) vs ``ref_hp`` (float64 oracle), bounded by ``ref_lp``'s own error."""
    if out.shape != ref_hp.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref_hp.shape)}")
    atol = ATOL[out.dtype] if atol is None else atol
    out64, hp = out.detach().double().cpu(), ref_hp.detach().double().cpu()
    lp = ref_lp.detach().double().cpu()
    finite = torch.isfinite(hp)
    bad_nan = finite & ~torch.isfinite(out64)
    if bad_nan.any():
        idx = bad_nan.nonzero()[0].tolist()
        raise AssertionError(f"{name}: {int(bad_nan.sum())} non-finite values where the reference "
                             f"is finite, first at {idx}: {out64[tuple(idx)].item()}")
    err = torch.where(finite, (out64 - hp).abs(), torch.zeros_like(hp))
    ref_err = torch.where(finite & torch.isfinite(lp), (lp - hp).abs(), torch.zeros_like(hp))
    bound = factor * ref_err.max().item() + atol
    if err.max().item() > bound:
        over = err > bound
        idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        raise AssertionError(
            f"{name}: max error {err.max().item():.3e} > bound {bound:.3e} "
            f"({factor} x reference error {ref_err.max().item():.3e} + atol {atol:.1e}); "
            f"{int(over.sum())}/{err.numel()} elements over, worst at {idx}: "
            f"got {out64[idx].item():.6g}, expected {hp[idx].item():.6g}")
    return err.max().item(), bound
