"""fastattn.ops.layer_norm: the fused LayerNorm (+ residual) kernels against float64 torch.

Every case checks the output and all gradients (dx, d residual, dw, db) with the tolerance rule
of tests.helpers: error vs float64 <= factor x (torch's own error in the input dtype) + atol.
"""
import pytest
import torch
import torch.nn.functional as F

from fastattn.backends import BackendUnavailableError
from fastattn.kernels import layer_norm_configs as configs
from fastattn.ops.layer_norm import layer_norm, layer_norm_bwd_op, layer_norm_fwd_op
from tests.helpers import (DEVICE, DTYPES, GRAD_FACTOR, assert_close_to_reference)

AFFINES = ("wb", "w", "b", "none")  # which of weight / bias are given


def _inputs(shape, dtype, affine="wb", residual=False, normalized_shape=None):
    """Inputs drawn in float64 and rounded once, so every reference sees the same values."""
    hidden = normalized_shape or (shape[-1],)
    draw = lambda *s, scale=1.0, shift=0.0: (
        torch.randn(*s, dtype=torch.float64) * scale + shift).to(dtype).to(DEVICE)
    return dict(
        x=draw(*shape, scale=2.0, shift=0.5),
        residual=draw(*shape) if residual else None,
        weight=draw(*hidden, scale=0.5, shift=1.0) if "w" in affine else None,
        bias=draw(*hidden) if "b" in affine else None,
    )


def _run(fn, tensors, dy, cast=None):
    """fn(**tensors) and the gradients of every given tensor for upstream gradient dy."""
    leaves = {k: (t if cast is None else t.to(cast)).detach().clone().requires_grad_(True)
              for k, t in tensors.items() if t is not None}
    out = fn(**leaves)
    out.backward(dy if cast is None else dy.to(cast))
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def _torch_ln(normalized_shape):
    def fn(x, residual=None, weight=None, bias=None):
        return F.layer_norm(x if residual is None else x + residual, normalized_shape, weight,
                            bias, 1e-5)
    return fn


def _fused_ln(normalized_shape):
    def fn(x, residual=None, weight=None, bias=None):
        return layer_norm(x, normalized_shape, weight, bias, 1e-5, residual=residual,
                          backend="triton")
    return fn


def check_against_reference(shape, dtype, affine, residual, normalized_shape=None):
    normalized_shape = normalized_shape or (shape[-1],)
    tensors = _inputs(shape, dtype, affine, residual, normalized_shape)
    dy = torch.randn(*shape, dtype=torch.float64).to(dtype).to(DEVICE)
    out, grads = _run(_fused_ln(normalized_shape), tensors, dy)
    ref_hp, grads_hp = _run(_torch_ln(normalized_shape), tensors, dy, cast=torch.float64)
    ref_lp, grads_lp = _run(_torch_ln(normalized_shape), tensors, dy)
    assert out.dtype == dtype and out.is_contiguous()
    errors = {"out": assert_close_to_reference(out, ref_hp, ref_lp, name="out")}
    assert set(grads) == set(grads_hp)
    for name in grads:
        errors[name] = assert_close_to_reference(grads[name], grads_hp[name], grads_lp[name],
                                                 factor=GRAD_FACTOR, name=f"d{name}")
    return errors


# Every hidden size x row count; weight / bias / residual presence cycles so that each size
# meets several of them (the full affine x residual product is checked below at two sizes).
FUSED_CASES = [(hidden, rows, AFFINES[i % 4], i % 2 == 0)
               for i, (hidden, rows) in enumerate(
                   (h, r) for h in (1, 33, 768, 1000, 4096) for r in (1, 17, 70))]
# Rows above MAX_FUSED_HIDDEN run the looped kernels; few rows keep the interpreter quick.
LOOPED_CASES = [(9000, 1, "wb", True), (9000, 3, "w", False), (65536, 2, "none", True)]


def _case_id(case):
    hidden, rows, affine, residual = case
    return f"N{hidden}-M{rows}-{affine}{'-res' if residual else ''}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", FUSED_CASES + LOOPED_CASES, ids=_case_id)
def test_forward_backward(case, dtype):
    hidden, rows, affine, residual = case
    check_against_reference((rows, hidden), dtype, affine, residual)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "res"])
@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("hidden", [33, 768])
def test_weight_bias_residual_combinations(hidden, affine, residual, dtype):
    check_against_reference((17, hidden), dtype, affine, residual)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_dims_and_multi_dim_normalized_shape(dtype):
    check_against_reference((2, 3, 5, 33), dtype, "wb", True)
    check_against_reference((3, 5, 4, 9), dtype, "wb", True, normalized_shape=(5, 4, 9))


def test_non_contiguous_inputs():
    """Strided rows are read in place; a transposed last dim, residual and dy are copied."""
    hidden = 100
    base = torch.randn(5, 7, 3 * hidden, device=DEVICE)
    x = base[:, :, hidden:2 * hidden]  # rows of stride 3 * hidden, last dim contiguous
    residual = torch.randn(7, 5, hidden, device=DEVICE).transpose(0, 1)  # rows not one stride
    weight = torch.randn(2 * hidden, device=DEVICE)[::2]  # strided weight
    bias = torch.randn(hidden, device=DEVICE)
    dy = torch.randn(hidden, 5, 7, device=DEVICE).permute(1, 2, 0)  # last dim strided
    assert not x.is_contiguous() and dy.stride(-1) != 1
    tensors = dict(x=x, residual=residual, weight=weight, bias=bias)
    out, grads = _run(_fused_ln((hidden,)), tensors, dy)
    ref_hp, grads_hp = _run(_torch_ln((hidden,)), tensors, dy, cast=torch.float64)
    ref_lp, grads_lp = _run(_torch_ln((hidden,)), tensors, dy)
    assert_close_to_reference(out, ref_hp, ref_lp)
    for name in grads:
        assert_close_to_reference(grads[name], grads_hp[name], grads_lp[name],
                                  factor=GRAD_FACTOR, name=f"d{name}")
    xt = torch.randn(hidden, 9, device=DEVICE).t()  # last dim not contiguous: copied
    torch.testing.assert_close(layer_norm(xt, hidden, backend="triton"),
                               F.layer_norm(xt, (hidden,)), atol=1e-5, rtol=1e-5)


def test_backward_is_deterministic():
    tensors = _inputs((70, 1000), torch.float32, "wb", True)
    dy = torch.randn(70, 1000, device=DEVICE)
    _, first = _run(_fused_ln((1000,)), tensors, dy)
    _, second = _run(_fused_ln((1000,)), tensors, dy)
    for name in first:
        assert torch.equal(first[name], second[name]), f"d{name} differs between two runs"


def test_residual_sum_is_stored_only_when_backward_needs_it():
    t = _inputs((4, 33), torch.float32, "wb", True)
    x, r, w, b = t["x"], t["residual"], t["weight"], t["bias"]
    y, mean, rstd, xsum = layer_norm_fwd_op(x, r, w, b, 1e-5, True)
    torch.testing.assert_close(xsum, x + r, rtol=0, atol=0)
    torch.testing.assert_close(mean, (x + r).mean(-1))
    assert layer_norm_fwd_op(x, r, w, b, 1e-5, False)[3].numel() == 0
    # Without a stored sum (e.g. store_sum=False under a gradient) backward recomputes it.
    leaves = [t.clone().requires_grad_(True) for t in (x, r, w, b)]
    layer_norm_fwd_op(*leaves, 1e-5, False)[0].sum().backward()
    ref = [t.clone().requires_grad_(True) for t in (x, r, w, b)]
    F.layer_norm(ref[0] + ref[1], (33,), ref[2], ref[3]).sum().backward()
    for got, want in zip(leaves, ref):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-5)


def test_only_requested_parameter_gradients():
    t = _inputs((17, 33), torch.float32, "wb", True)
    x = t["x"].clone().requires_grad_(True)
    y = layer_norm(x, 33, t["weight"], t["bias"], residual=t["residual"], backend="triton")
    y.sum().backward()
    ref = t["x"].clone().requires_grad_(True)
    F.layer_norm(ref + t["residual"], (33,), t["weight"], t["bias"]).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, atol=1e-5, rtol=1e-5)
    dx, dw, db = layer_norm_bwd_op(torch.ones_like(x), x.detach(), t["weight"],
                                   *layer_norm_fwd_op(x.detach(), None, t["weight"], None,
                                                      1e-5, False)[1:3], False, False)
    assert dw.numel() == 0 and db.numel() == 0 and dx.shape == x.shape


@pytest.mark.parametrize("shape", [(0, 768), (2, 0, 33), (3, 0)], ids=["rows0", "lead0", "N0"])
def test_empty_inputs_match_torch(shape):
    hidden = shape[-1]
    tensors = _inputs(shape, torch.float32, "wb", True)
    dy = torch.randn(*shape, device=DEVICE)
    out, grads = _run(_fused_ln((hidden,)), tensors, dy)
    ref, ref_grads = _run(_torch_ln((hidden,)), tensors, dy)
    assert out.shape == ref.shape == shape
    for name in grads:
        assert grads[name].shape == ref_grads[name].shape
        torch.testing.assert_close(grads[name], ref_grads[name], equal_nan=True)


def test_opcheck_custom_ops():
    t = _inputs((5, 33), torch.float32, "wb", True)
    x, r, w, b = t["x"], t["residual"], t["weight"], t["bias"]
    leaves = [v.clone().requires_grad_(True) for v in (x, r, w, b)]
    torch.library.opcheck(layer_norm_fwd_op, (*leaves, 1e-5, True))
    torch.library.opcheck(layer_norm_fwd_op, (leaves[0], None, None, leaves[3], 1e-5, False))
    y, mean, rstd, xsum = layer_norm_fwd_op(x, r, w, b, 1e-5, True)
    torch.library.opcheck(layer_norm_bwd_op, (torch.randn_like(y), xsum, w, mean, rstd,
                                              True, True))


def test_configs_cover_every_hidden_size_and_compile_plan():
    for kernel in configs.KERNELS:
        for hidden in (1, 63, 64, 65, 768, 1024, 1025, 8192, 8193, 65536):
            cfg = configs.pick_config(hidden, kernel)
            assert cfg.looped == (hidden > configs.MAX_FUSED_HIDDEN)
            assert cfg.looped or cfg.block_n >= hidden
            if cfg in configs.all_configs(kernel):
                continue
            raise AssertionError(f"{kernel} config {cfg} for N={hidden} is not compiled ahead")
    for rows in (1, 7, 17, 70, 100_003):
        for hidden in (33, 768, 9000):
            cfg = configs.pick_config(hidden, "bwd")
            programs, per_program = configs.backward_grid(rows, cfg, sm_count=132)
            assert per_program % cfg.block_m == 0
            assert (programs - 1) * per_program < rows <= programs * per_program
    from fastattn.kernels import layer_norm as kernels
    specs = list(configs.aot_specs(9))
    assert len(specs) < 60
    for spec in specs:
        fn = getattr(kernels, spec["fn"].split(":")[1])
        assert list(spec["signature"]) == list(fn.arg_names), spec["config"]


# --------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_clear_errors():
    x = torch.randn(4, 8, device=DEVICE)
    w = torch.ones(8, device=DEVICE)
    cases = [
        (ValueError, "normalized_shape", lambda: layer_norm(x, 7, backend="triton")),
        (ValueError, "normalized_shape", lambda: layer_norm(x, (2, 4, 8), backend="triton")),
        (TypeError, "normalized_shape", lambda: layer_norm(x, "8", backend="triton")),
        (ValueError, "weight", lambda: layer_norm(x, 8, torch.ones(7, device=DEVICE))),
        (ValueError, "bias", lambda: layer_norm(x, 8, w, torch.ones(9, device=DEVICE))),
        (ValueError, "residual", lambda: layer_norm(x, 8, residual=x[:3], backend="triton")),
        (TypeError, "residual", lambda: layer_norm(x, 8, residual=x.double(), backend="triton")),
        (TypeError, "weight", lambda: layer_norm(x, 8, w.half(), backend="triton")),
        (ValueError, "weight", lambda: layer_norm(x, 8, w.to("meta"), backend="triton")),
        (TypeError, "x", lambda: layer_norm(x.long(), 8, backend="triton")),
        (TypeError, "x", lambda: layer_norm(x.tolist(), 8)),
        (TypeError, "float16, bfloat16 or float32",
         lambda: layer_norm(x.double(), 8, backend="triton")),
        (TypeError, "eps", lambda: layer_norm(x, 8, eps="small", backend="triton")),
        (ValueError, "eps", lambda: layer_norm(x, 8, eps=-1.0, backend="triton")),
        (ValueError, "backend", lambda: layer_norm(x, 8, backend="numpy")),
    ]
    for exc, words, call in cases:
        with pytest.raises(exc, match=words):
            call()
    with pytest.raises(BackendUnavailableError):
        layer_norm(x, 8, backend="cuda")


def test_auto_backend_takes_float64_like_torch():
    x = torch.randn(3, 5, 8, dtype=torch.float64, device=DEVICE)
    w, b = torch.randn(8, dtype=torch.float64, device=DEVICE), torch.randn(8, dtype=torch.float64,
                                                                           device=DEVICE)
    torch.testing.assert_close(layer_norm(x, 8, w, b, residual=x, backend="auto"),
                               F.layer_norm(x + x, (8,), w, b))
