"""Feed-forward GEMMs with fused epilogues against the float64 PyTorch block."""
import pytest
import torch

from fastattn.ops.feedforward import (feedforward, feedforward_bwd_op, feedforward_fwd_op,
                                      matmul)
from tests.helpers import DEVICE, DTYPES, GRAD_FACTOR, assert_close_to_reference

ACTS = ["relu", "gelu", "gelu_tanh"]


def _params(e, hidden, dtype):
    w1 = torch.randn(hidden, e, device=DEVICE, dtype=dtype) / e ** 0.5
    b1 = torch.randn(hidden, device=DEVICE, dtype=dtype) * 0.1
    w2 = torch.randn(e, hidden, device=DEVICE, dtype=dtype) / hidden ** 0.5
    b2 = torch.randn(e, device=DEVICE, dtype=dtype) * 0.1
    return [w1, b1, w2, b2]


def _run(x, params, act, residual, backend, dtype):
    ins = [t.detach().to(dtype).requires_grad_() for t in [x, *params]]
    res = None if residual is None else residual.detach().to(dtype).requires_grad_()
    y = feedforward(ins[0], *ins[1:], act, res, backend=backend)
    dy = torch.Generator(device="cpu").manual_seed(1)
    dy = torch.randn(y.shape, generator=dy).to(y.device, dtype)
    wrt = ins + ([res] if res is not None else [])
    return y, torch.autograd.grad(y, wrt, dy)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("tokens,e,fe", [(1, 33, 4), (17, 40, 2), (70, 96, 1)],
                         ids=["M1E33", "M17E40", "M70E96"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward(tokens, e, fe, act, residual, dtype):
    x = torch.randn(tokens, e, device=DEVICE)
    params = _params(e, fe * e, torch.float32)
    r = torch.randn(tokens, e, device=DEVICE) if residual else None
    y, grads = _run(x, params, act, r, "triton", dtype)
    hp, hp_grads = _run(x, params, act, r, "torch", torch.float64)
    lp, lp_grads = _run(x, params, act, r, "torch", dtype)
    assert_close_to_reference(y, hp, lp)
    names = ["dx", "dw1", "db1", "dw2", "db2", "dresidual"]
    for name, g, ghp, glp in zip(names, grads, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=name)


def test_leading_dims_and_strided_input():
    x = torch.randn(2, 9, 2 * 48, device=DEVICE)[..., ::2]  # (2, 9, 48) with stride 2
    params = _params(48, 96, torch.float32)
    y = feedforward(x, *params, "gelu", backend="triton")
    ref = feedforward(x.double(), *[p.double() for p in params], "gelu", backend="torch")
    assert y.shape == (2, 9, 48)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


def test_matmul_reads_transposed_operands_through_strides():
    a = torch.randn(37, 20, device=DEVICE)
    w = torch.randn(29, 20, device=DEVICE)
    torch.testing.assert_close(matmul(a, w.t()), a @ w.t(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(matmul(a.t(), a), a.t() @ a, atol=1e-4, rtol=1e-5)


def test_empty_batch():
    x = torch.randn(0, 16, device=DEVICE, requires_grad=True)
    y = feedforward(x, *_params(16, 32, torch.float32), "relu", backend="triton")
    assert y.shape == (0, 16)


def test_opcheck():
    x = torch.randn(5, 16, device=DEVICE, requires_grad=True)
    params = [p.requires_grad_() for p in _params(16, 32, torch.float32)]
    torch.library.opcheck(feedforward_fwd_op, (x, *params, None, 2))
    r = torch.randn(5, 16, device=DEVICE, requires_grad=True)
    torch.library.opcheck(feedforward_fwd_op, (x, *params, r, 1))


@pytest.mark.parametrize("act", ACTS)
def test_inference_stores_no_pre_activation(act):
    """Without autograd the first GEMM's epilogue skips the pre-activation store (h is empty)
    and the output is unchanged."""
    x = torch.randn(9, 16, device=DEVICE).half()
    params = [p.half() for p in _params(16, 32, torch.float32)]
    code = {"relu": 1, "gelu": 2, "gelu_tanh": 3}[act]
    y, h, a = feedforward_fwd_op(x, *params, None, code, False, False)
    y_full, h_full, a_full = feedforward_fwd_op(x, *params, None, code, True, False)
    assert h.shape == (0, 32) and h_full.shape == (9, 32)
    torch.testing.assert_close(y, y_full, atol=0, rtol=0)
    torch.testing.assert_close(a, a_full, atol=0, rtol=0)
    with torch.no_grad():
        y_nograd = feedforward(x, *params, act, backend="triton")
    torch.testing.assert_close(y_nograd, y, atol=0, rtol=0)
    torch.library.opcheck(feedforward_fwd_op, (x, *params, None, code, False, False))


def test_opcheck_backward_with_transposed_operands():
    # a dense but transposed x: the fake kernel must promise the real (contiguous) strides
    x = torch.randn(16, 5, device=DEVICE).t()
    w1, _, w2, _ = _params(16, 32, torch.float32)
    h = torch.randn(5, 32, device=DEVICE)
    torch.library.opcheck(feedforward_bwd_op,
                          (torch.randn(5, 16, device=DEVICE), x, w1, w2, h, h.relu(), 1))


def test_bad_inputs_name_the_argument():
    x = torch.randn(4, 16, device=DEVICE)
    w1, b1, w2, b2 = _params(16, 32, torch.float32)
    with pytest.raises(ValueError, match="x's last dim .* w1's in_features"):
        feedforward(torch.randn(4, 17, device=DEVICE), w1, b1, w2, b2, backend="triton")
    with pytest.raises(ValueError, match="activation must be one of"):
        feedforward(x, w1, b1, w2, b2, "swish", backend="triton")
    with pytest.raises(ValueError, match="w2 must be"):
        feedforward(x, w1, b1, w2[:, :5], b2, backend="triton")
    with pytest.raises(TypeError, match="share one dtype"):
        feedforward(x.half(), w1, b1, w2, b2, backend="triton")
    with pytest.raises(ValueError, match="residual must have x's shape"):
        feedforward(x, w1, b1, w2, b2, "relu", x[:2], backend="triton")
    with pytest.raises(ValueError, match="one device"):
        feedforward(x, w1.to("meta"), b1, w2, b2, backend="triton")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        feedforward(x.tolist(), w1, b1, w2, b2)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        feedforward(x.double(), w1.double(), b1.double(), w2.double(), b2.double(),
                    backend="triton")


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("act", ACTS)
def test_torch_backend_equals_linear_activation_linear(act, grad):
    """The "torch" backend (addmm, fused activation without grad) is nn.Linear + act + Linear."""
    x = torch.randn(2, 9, 2 * 24, device=DEVICE)[..., ::2]  # (2, 9, 24), strided
    res = torch.randn(2, 9, 24, device=DEVICE)
    params = [p.requires_grad_(grad) for p in _params(24, 48, torch.float32)]
    w1, b1, w2, b2 = params
    act_fn = {"relu": torch.relu, "gelu": torch.nn.functional.gelu,
              "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh")}[act]
    ref = torch.nn.functional.linear(act_fn(torch.nn.functional.linear(x, w1, b1)), w2, b2)
    y = feedforward(x, *params, act, res, backend="torch")
    assert y.shape == (2, 9, 24)
    torch.testing.assert_close(y, ref + res, atol=1e-5, rtol=1e-5)
    if grad:
        got = torch.autograd.grad(y.sum(), params)
        want = torch.autograd.grad((ref + res).sum(), params)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
