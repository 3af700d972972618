"""The GEMM-with-epilogue kernels (TMA and pointer), their cuBLAS equivalent and the per-shape
choice between them, against float64 references."""
import pytest
import torch
import torch.nn.functional as F

from fastattn import tuning
from fastattn.kernels.matmul_configs import (EPILOGUES, case_key, feedforward_cases,
                                             parse_case_key, tune_candidates)
from fastattn.ops.gemm import (choose_backend, cublas_matmul, gemm_case, layout_of, matmul,
                               tma_operands)
from tests.helpers import DEVICE

ACT = {1: lambda h: F.relu(h), 2: lambda h: F.gelu(h),
       3: lambda h: F.gelu(h, approximate="tanh")}


def _act_grad(h, act):
    h = h.detach().requires_grad_()
    return torch.autograd.grad(ACT[act](h).sum(), h)[0]


def _reference(a, b, epilogue, bias, pre, residual):
    """float64 (C, stored pre-activation or None)."""
    has_bias, act, store_pre, act_grad, has_res = EPILOGUES[epilogue]
    acc = a.double() @ b.double()
    if has_bias:
        acc = acc + bias.double()
    h = acc
    if act:
        acc = ACT[act](acc)
    if act_grad:
        acc = acc * _act_grad(pre.double(), act_grad)
    if has_res:
        acc = acc + residual.double()
    return acc, (h if store_pre else None)


def _strided(rows, cols, dtype, transposed=False):
    """(rows, cols) with a padded row stride (16-byte aligned rows: TMA can read it)."""
    if transposed:
        return _strided(cols, rows, dtype).t()
    stride = -(-cols // 8) * 8 + 8
    return (torch.randn(rows, stride, device=DEVICE) / cols ** 0.5).to(dtype)[:, :cols]


def _operands(m, k, n, epilogue, dtype, a_t=False, b_t=True):
    a = _strided(m, k, dtype, a_t)
    b = _strided(k, n, dtype, b_t)
    bias = torch.randn(n, device=DEVICE).to(dtype)
    pre_in = torch.randn(m, n, device=DEVICE).to(dtype)
    residual = torch.randn(m, n, device=DEVICE).to(dtype)
    return a, b, bias, pre_in, residual


def _check(kernel, epilogue, dtype, m=37, k=45, n=24, a_t=False, b_t=True):
    a, b, bias, pre_in, residual = _operands(m, k, n, epilogue, dtype, a_t, b_t)
    has_bias, act, store_pre, act_grad, has_res = EPILOGUES[epilogue]
    pre = torch.empty(m, n, device=DEVICE, dtype=dtype) if store_pre else (
        pre_in if act_grad else None)
    out = matmul(a, b, epilogue, bias=bias if has_bias else None, pre=pre,
                 residual=residual if has_res else None, kernel=kernel)
    ref, ref_pre = _reference(a, b, epilogue, bias, pre, residual)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.float16 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.double(), ref, **tol)
    if store_pre:
        torch.testing.assert_close(pre.double(), ref_pre, **tol)


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
def test_tma_kernel_every_epilogue_odd_m_and_k(epilogue):
    """M = 37 and K = 45 odd (K read through a padded row stride), N = 24 < one tile:
    the TMA kernel's ragged edges (zero fill on load, clipped stores) on every epilogue."""
    _check("tma", epilogue, torch.float16)


@pytest.mark.parametrize("epilogue", ["bias_gelu", "bias_residual", "gelu_tanh_grad", "plain"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_pointer_kernel_epilogues_odd_shapes(epilogue, dtype):
    _check("pointer", epilogue, dtype, m=29, k=19, n=21)


@pytest.mark.parametrize("a_t,b_t", [(False, False), (True, False), (True, True)],
                         ids=["nn", "tn", "tt"])
def test_tma_kernel_reads_transposed_operands(a_t, b_t):
    _check("tma", "bias_relu", torch.float16, m=70, k=40, n=40, a_t=a_t, b_t=b_t)


def test_tma_walks_several_tiles_per_program():
    # 5 x 3 tiles of 32 x 32 over the interpreter's 4 persistent programs
    _check("tma", "bias_gelu_tanh", torch.float16, m=150, k=72, n=96)


def test_unaligned_operands_fall_back_to_the_pointer_kernel():
    a = torch.randn(33, 41, device=DEVICE).half()[:, 1:]  # base 2 bytes off 16-byte alignment
    b = torch.randn(40, 24, device=DEVICE).half()
    c = torch.empty(33, 24, device=DEVICE).half()
    assert tma_operands(a, b, c, None, None) is None
    assert tma_operands(a.contiguous(), b, c, None, None) == (False, False, 40, 24, 24, 0, 0)
    with pytest.raises(ValueError, match="TMA kernel cannot read"):
        matmul(a, b, kernel="tma")
    torch.testing.assert_close(matmul(a, b).double(), a.double() @ b.double(),
                               atol=2e-2, rtol=2e-2)
    odd_n = torch.randn(40, 21, device=DEVICE).half()  # C's rows would be 42 bytes
    torch.testing.assert_close(matmul(a.contiguous(), odd_n).double(),
                               a.double() @ odd_n.double(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
def test_cublas_equivalent_matches_every_epilogue(epilogue):
    a, b, bias, pre_in, residual = _operands(20, 24, 16, epilogue, torch.float64)
    has_bias, act, store_pre, act_grad, has_res = EPILOGUES[epilogue]
    pre = torch.empty(20, 16, device=DEVICE, dtype=torch.float64) if store_pre else (
        pre_in if act_grad else None)
    out = cublas_matmul(a, b, epilogue, bias=bias if has_bias else None, pre=pre,
                        residual=residual if has_res else None)
    ref, ref_pre = _reference(a, b, epilogue, bias, pre, residual)
    torch.testing.assert_close(out, ref)
    if store_pre:
        torch.testing.assert_close(pre, ref_pre)


def test_case_keys_and_candidates():
    key = case_key("bias_gelu", "float16", "nt", 8000, 768, 3072)
    assert key == "bias_gelu:float16:nt:m8192:k768:n3072"
    assert parse_case_key(key) == dict(epilogue="bias_gelu", dtype="float16", layout="nt",
                                       m=8192, k=768, n=3072)
    x = torch.empty(100, 64, device=DEVICE, dtype=torch.float16)
    w = torch.empty(256, 64, device=DEVICE, dtype=torch.float16)
    assert layout_of(x, w.t()) == "nt" and layout_of(x.t(), x) == "tn"
    assert gemm_case(x, w.t(), "bias_relu") == "bias_relu:float16:nt:m128:k64:n256"
    cands = tune_candidates(key)
    assert cands[0] == {"backend": "cublas"}
    assert {c.get("kernel") for c in cands[1:]} == {"tma", "pointer"}
    assert all(c["backend"] == "triton" for c in cands[1:])
    small = tune_candidates(key, smem_limit=100 * 1024, tma=False)
    assert {c.get("kernel") for c in small[1:]} == {"pointer"}
    cases = feedforward_cases(8192, 768, 3072, "bfloat16", "gelu", training=True)
    assert list(cases) == ["ffn1", "ffn2", "ffn_dh", "ffn_dx", "ffn_dw1", "ffn_dw2"]
    assert cases["ffn2"] == "bias_residual:bfloat16:nt:m8192:k3072:n768"
    with pytest.raises(ValueError, match="epilogue must be one of"):
        case_key("bias_swish", "float16", "nt", 1, 1, 1)


def test_dispatch_defaults_to_cublas_and_follows_the_tuned_table():
    """No CUDA is touched: a cuda device with no tuned table means cuBLAS(Lt); a forced
    entry (how ``fastattn tune`` times candidates) picks the backend and the config."""
    cuda = torch.device("cuda", 0)
    key = case_key("bias_gelu", "float16", "nt", 8192, 768, 3072)
    backend, cfg, why = choose_backend(cuda, key)
    if not torch.cuda.is_available():
        assert (backend, cfg) == ("cublas", None) and "cuBLAS" in why
    triton_cfg = tune_candidates(key)[1]
    with tuning.override("matmul", key, triton_cfg):
        backend, cfg, why = choose_backend(cuda, key)
        assert backend == "triton" and cfg.kernel == "tma" and cfg.block_k == 128
    with tuning.override("matmul", key, {"backend": "cublas"}):
        assert choose_backend(cuda, key)[0] == "cublas"
    assert choose_backend(torch.device("cpu"), key)[0] == "triton"


def test_feedforward_cases_are_the_keys_the_dispatch_looks_up(monkeypatch):
    """The keys ``fastattn tune`` writes (feedforward_cases) are those each GEMM of a
    feed-forward forward + backward asks the tuned table for."""
    import fastattn.ops.feedforward as ff

    seen = {}
    real = ff.gemm

    def spy(a, b, epilogue="plain", **kw):
        seen[gemm_case(a, b, epilogue)] = epilogue
        return real(a, b, epilogue, **kw)

    monkeypatch.setattr(ff, "gemm", spy)
    x = torch.randn(5, 16, device=DEVICE, requires_grad=True)
    w1, w2 = torch.randn(64, 16, device=DEVICE), torch.randn(16, 64, device=DEVICE)
    b1, b2 = torch.zeros(64, device=DEVICE), torch.zeros(16, device=DEVICE)
    params = [t.requires_grad_() for t in (w1, b1, w2, b2)]
    ff.feedforward(x, *params, "gelu", backend="triton").sum().backward()
    expected = feedforward_cases(5, 16, 64, "float32", "gelu", residual=False, training=True)
    assert set(seen) == set(expected.values())


def test_feedforward_dispatch_reason_names_each_gemm(monkeypatch):
    import fastattn.ops.feedforward as ff

    assert "PyTorch path" in ff.feedforward_dispatch_reason("cpu", torch.float16, 8192, 768, 3072)
    monkeypatch.setattr(ff, "resolve_backend", lambda backend, device: "triton")
    cuda = torch.device("cuda", 0)
    key = case_key("bias_gelu_nopre", "float16", "nt", 8192, 768, 3072)
    with tuning.override("matmul", key, tune_candidates(key)[1]):
        text = ff.feedforward_dispatch_reason(cuda, torch.float16, 8192, 768, 3072)
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == ["ffn1", "ffn2"]
    assert "Triton tma 128x128x128" in lines[0] and key in lines[0]
    if not torch.cuda.is_available():
        assert "cuBLAS(Lt)" in lines[1]
    training = ff.feedforward_dispatch_reason(cuda, torch.float16, 8192, 768, 3072,
                                              training=True)
    assert len(training.splitlines()) == 6
