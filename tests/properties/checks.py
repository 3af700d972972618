"""Forward-and-gradient comparison of a fastattn op with its float64 reference, inputs kept in
the layout the strategy made (views, strides), within the tolerance table."""
import torch

from tests.helpers import GRAD_FACTOR, assert_close_to_reference


def _grad(out, inputs, dout):
    """Gradients of ``out`` for ``inputs``; an input the output does not depend on (an empty
    batch) gets zeros."""
    if not inputs:
        return ()
    if not out.requires_grad:
        return tuple(torch.zeros_like(t) for t in inputs)
    grads = torch.autograd.grad(out, inputs, dout, allow_unused=True)
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))


def check_op(fn, ref, inputs: dict, *, rows=None, seed: int = 0):
    """``fn(**inputs)`` vs ``ref(**inputs in float64)`` and ``ref(**inputs as given)``: the
    output (factor 2) and the gradient of every floating-point input (factor 3) under one
    random output gradient.  ``rows``: a bool selector broadcastable to the output; positions
    outside it get no output gradient and are not compared.  Returns (out, grads)."""
    floats = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)
              and v.is_floating_point() and v.requires_grad is False and k != "mask"]
    xs = {k: (v.detach().requires_grad_() if k in floats else v) for k, v in inputs.items()}
    out = fn(**xs)
    g = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device)
    if rows is not None:
        dout = dout * rows
    grads = _grad(out, [xs[k] for k in floats], dout.to(out.dtype))

    def run_ref(cast):
        ys = {k: (v.detach().to(cast).requires_grad_() if k in floats else v)
              for k, v in inputs.items()}
        r = ref(**ys)
        return r, _grad(r, [ys[k] for k in floats], dout.to(r.dtype))
    hp, g_hp = run_ref(torch.float64)
    dtype = out.dtype
    lp, g_lp = run_ref(dtype)
    sel = (lambda t: t * rows) if rows is not None else (lambda t: t)
    assert_close_to_reference(sel(out), sel(hp), sel(lp), name="out")
    for name, a, b, c in zip(floats, grads, g_hp, g_lp):
        assert_close_to_reference(a, b, c, factor=GRAD_FACTOR, name=f"d{name}")
    return out, grads
