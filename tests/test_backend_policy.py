"""The one backend policy (fastattn.backends.choose_backend) as every public op applies it:
"auto" never raises where the torch path works; an explicit backend that cannot serve a call
raises BackendUnavailableError with the reason; "cuda" runs the Triton kernels where the
extension has no kernel.  Plus the packed-attention rules the policy's paths share: outputs and
gradients outside cu_seqlens / past max_seqlen are 0 on every backend."""
import pytest
import torch

import fastattn
from fastattn import backends, functional
from fastattn.backends import (BackendUnavailableError, UnsupportedDtypeError,
                               UnsupportedInputError, choose_backend, kernel_refusal)
from fastattn.reference import attention_reference
from fastattn.torch_paths import torch_varlen_traced
from tests.helpers import DEVICE

backends.triton_version()  # import triton under the suite's TRITON_INTERPRET, before any test
# below changes the variable
CPU = torch.device("cpu")
CUDA = torch.device("cuda")
H, D = 2, 16


def _meta(dtype=torch.float32, d=D):
    return torch.empty(1, H, 3, d, dtype=dtype, device="meta")


@pytest.fixture
def gpu_here(monkeypatch):
    """Answer the device probes as a machine with CUDA, triton and the extension would
    (choose_backend only reads them; nothing touches a GPU)."""
    monkeypatch.setattr(backends, "triton_unavailable_reason",
                        lambda device: None if device.type == "cuda" else "cpu")
    monkeypatch.setattr(backends, "cuda_extension_error", lambda: None)


# ------------------------------------------------------------------------ the rules themselves

@pytest.mark.parametrize("dtype,d", [(torch.float64, D), (torch.float32, 20),
                                     (torch.float32, 264)], ids=["float64", "d20", "d264"])
def test_auto_on_cuda_falls_back_to_torch_where_the_kernels_cannot(gpu_here, dtype, d):
    refusal = kernel_refusal(_meta(dtype, d), head_dim=d)
    assert refusal is not None
    assert choose_backend("attention", "auto", CUDA, refusal=refusal) == "torch"
    assert choose_backend("attention", "auto", CUDA, refusal=None) == "triton"


def test_explicit_backend_that_cannot_serve_raises_typed_errors(gpu_here):
    for backend in ("triton", "cuda"):
        with pytest.raises(UnsupportedDtypeError, match="attention: .*float64") as info:
            choose_backend("attention", backend, CUDA,
                           refusal=kernel_refusal(_meta(torch.float64), head_dim=D))
        assert isinstance(info.value, TypeError)
        with pytest.raises(UnsupportedInputError, match="head_dim must be a multiple of 8") as info:
            choose_backend("attention", backend, CUDA,
                           refusal=kernel_refusal(_meta(d=20), head_dim=20))
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, BackendUnavailableError)


def test_cuda_without_a_kernel_for_the_call_runs_triton(gpu_here, monkeypatch):
    assert choose_backend("layer_norm", "cuda", CUDA, cuda_kernel=True) == "cuda"
    assert choose_backend("varlen_attention", "cuda", CUDA, cuda_kernel=False) == "triton"
    monkeypatch.setattr(backends, "triton_unavailable_reason", lambda device: "no triton")
    with pytest.raises(BackendUnavailableError, match="no kernel for this call.*no triton"):
        choose_backend("varlen_attention", "cuda", CUDA, cuda_kernel=False)


def test_torch_always_runs_and_unknown_names_raise():
    assert choose_backend("attention", "torch", CUDA,
                          refusal=kernel_refusal(_meta(torch.float64), head_dim=D)) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("attention", "fast", CPU)


# ------------------------------------------------------------- every op applies the same rules

def _calls(dtype=torch.float32):
    """One small call of every public op, backend left to the caller."""
    q = torch.randn(2, H, 5, D, dtype=dtype)
    packed = torch.randn(7, H, D, dtype=dtype)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    x = torch.randn(3, 8, dtype=dtype)
    w1, b1 = torch.randn(16, 8, dtype=dtype), torch.randn(16, dtype=dtype)
    w2, b2 = torch.randn(8, 16, dtype=dtype), torch.randn(8, dtype=dtype)
    return {
        "attention": lambda b: fastattn.attention(q, q, q, backend=b),
        "scaled_dot_product_attention":
            lambda b: fastattn.scaled_dot_product_attention(q, q, q, backend=b),
        "varlen_attention":
            lambda b: fastattn.varlen_attention(packed, packed, packed, cu, cu, 4, 4, backend=b),
        "layer_norm": lambda b: fastattn.layer_norm(x, 8, backend=b),
        "feedforward": lambda b: fastattn.feedforward(x, w1, b1, w2, b2, "gelu", backend=b),
    }


OPS = list(_calls())


@pytest.mark.parametrize("op", OPS)
def test_float64_auto_runs_torch_and_explicit_triton_names_the_dtype(op):
    call = _calls(torch.float64)[op]
    assert call("auto").dtype == torch.float64
    with pytest.raises(UnsupportedDtypeError, match=f"{op}: backend='triton'.*torch.float64"):
        call("triton")


@pytest.mark.skipif(not backends.interpreter_enabled(), reason="the Triton interpreter is off")
@pytest.mark.parametrize("op", OPS)
def test_bfloat16_under_the_interpreter_is_refused_on_triton(op):
    call = _calls(torch.bfloat16)[op]
    with pytest.raises(TypeError, match=r"bfloat16.*Triton interpreter \(TRITON_INTERPRET=1\)"):
        call("triton")
    assert call("auto").dtype == torch.bfloat16  # "auto" on CPU: the torch path


@pytest.mark.parametrize("op", OPS)
def test_cpu_without_interpreter_auto_runs_and_triton_says_why(op, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    call = _calls()[op]
    assert torch.isfinite(call("auto")).all()
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        call("triton")


@pytest.mark.parametrize("op", OPS)
def test_cuda_on_cpu_tensors_is_a_clear_error(op):
    with pytest.raises(BackendUnavailableError, match=f"{op}: backend='cuda' needs CUDA"):
        _calls()[op]("cuda")


def test_attention_head_dim_outside_the_kernels():
    q = torch.randn(1, H, 5, 20)
    assert fastattn.attention(q, q, q, backend="auto").shape == q.shape
    with pytest.raises(UnsupportedInputError, match="head_dim must be a multiple of 8"):
        fastattn.attention(q, q, q, backend="triton")


def test_default_cuda_keeps_the_packed_path_on_triton(monkeypatch):
    """With "cuda" as the process default, SelfAttention's packed path (the encoder's
    padding-free path) runs the Triton varlen kernels, as attention runs them for calls the
    extension lacks.  The device probes answer as a GPU with the extension would."""
    real = functional.choose_backend
    seen = []

    def as_on_gpu(op, backend, device, **kw):
        chosen = real(op, backend, CUDA, **kw)
        seen.append((op, chosen))
        return chosen

    torch.manual_seed(0)
    module = fastattn.SelfAttention(32, 2).to(DEVICE)
    x = torch.randn(9, 32, device=DEVICE)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32, device=DEVICE)
    with fastattn.use_backend("torch"):
        expected = module(x, x, x, cu_seqlens=cu, max_seqlen=5)
    monkeypatch.setattr(functional, "choose_backend", as_on_gpu)
    monkeypatch.setattr(backends, "triton_unavailable_reason", lambda device: None)
    monkeypatch.setattr(backends, "cuda_extension_error", lambda: None)
    with fastattn.use_backend("cuda"):
        out = module(x, x, x, cu_seqlens=cu, max_seqlen=5)
    assert ("varlen_attention", "triton") in seen
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


# ----------------------------------------- packed attention outside the sequences: zero, everywhere

LENS, EXTRA = [3, 5], 3  # 8 tokens in two sequences, then 3 tokens in none
CUT = {"tokens_outside_cu_seqlens": max(LENS), "rows_past_max_seqlen": 4}


def _packed_case():
    torch.manual_seed(0)
    total = sum(LENS) + EXTRA
    q, k, v = (torch.randn(total, H, D, device=DEVICE, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, LENS[0], sum(LENS)], dtype=torch.int32, device=DEVICE)
    return q, k, v, cu, torch.randn(total, H, D, device=DEVICE)


def _run(backend, max_q, q, k, v, cu, dout):
    if backend == "traced":  # the torch.compile path, run eagerly
        out = torch_varlen_traced(q, k, v, cu, cu, max_q, max(LENS), False, D ** -0.5)
    else:
        out = fastattn.varlen_attention(q, k, v, cu, cu, max_q, max(LENS), backend=backend)
    return (out,) + torch.autograd.grad(out, (q, k, v), dout)


def _expected(max_q, q, k, v, cu, dout):
    """float64: each sequence's first min(L, max_q) query rows over all its keys; zero
    elsewhere (and no gradient from the rows left out)."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = torch.zeros_like(q64)
    bounds = cu.tolist()
    for a, b in zip(bounds, bounds[1:]):
        rows = min(b - a, max_q)
        o = attention_reference(*(t[s:e].transpose(0, 1)[None] for t, s, e in
                                  ((q64, a, a + rows), (k64, a, b), (v64, a, b))))
        out = out.index_copy(0, torch.arange(a, a + rows, device=DEVICE), o[0].transpose(0, 1))
    return (out,) + torch.autograd.grad(out, (q64, k64, v64), dout.double())


@pytest.mark.parametrize("backend,case", [
    pytest.param(b, c, id=f"{b}-{c}")
    for b in ("torch", "traced", "triton") for c in CUT])
def test_outputs_and_gradients_outside_the_sequences_are_zero(backend, case):
    max_q = CUT[case]
    q, k, v, cu, dout = _packed_case()
    got = _run(backend, max_q, q, k, v, cu, dout)
    want = _expected(max_q, q, k, v, cu, dout)
    outside = torch.zeros(q.shape[0], dtype=torch.bool, device=DEVICE)
    outside[sum(LENS):] = True  # tokens in no sequence
    outside[LENS[0] + max_q:sum(LENS)] = True  # rows past max_seqlen_q (none when uncut)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.shape == w.shape == q.shape, name
        if name in ("out", "dq"):
            assert (g[outside] == 0).all(), f"{name} is not zero outside the computed rows"
        else:
            assert (g[sum(LENS):] == 0).all(), f"{name} is not zero at tokens in no sequence"
        torch.testing.assert_close(g.double(), w, atol=2e-5, rtol=2e-5, msg=name)


# -------------------------------------------- SelfAttention's packed path, distinct inputs

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_packed_path_projects_values_keys_and_query_each(backend):
    torch.manual_seed(0)
    module = fastattn.SelfAttention(32, 2, backend=backend).to(DEVICE)
    lens, length = [3, 6], 6
    mask = torch.arange(length, device=DEVICE)[None, :] < torch.tensor(lens, device=DEVICE)[:, None]
    values, keys, query = (torch.randn(2, length, 32, device=DEVICE) for _ in range(3))
    padded = module(values, keys, query, mask)  # the padded path: each tensor projected
    packed = [fastattn.unpad_input(t, mask) for t in (values, keys, query)]
    cu, max_len = packed[0][2], packed[0][3]
    out = module(packed[0][0], packed[1][0], packed[2][0], cu_seqlens=cu, max_seqlen=max_len)
    torch.testing.assert_close(out, padded[mask], atol=1e-4, rtol=1e-4)
    self_attention = module(packed[2][0], packed[2][0], packed[2][0], cu_seqlens=cu,
                            max_seqlen=max_len)
    assert not torch.allclose(out, self_attention, atol=1e-3)
    with pytest.raises(ValueError, match="same sequences"):
        module(packed[0][0][:-1], packed[1][0], packed[2][0], cu_seqlens=cu, max_seqlen=max_len)


# ---------------------------------------------------------------------------- dropout seeds

@pytest.mark.parametrize("seed,match", [
    (([7], torch.int32, DEVICE), "int64 tensor, got dtype torch.int32"),
    (([7, 8], torch.int64, DEVICE), r"got shape \(2,\)"),
    ((7, torch.int64, DEVICE), r"got shape \(\)"),
    (([7], torch.int64, "meta"), "seed is on meta but the inputs"),
], ids=["int32", "two", "scalar", "other_device"])
def test_dropout_seed_is_validated_by_the_launchers(seed, match):
    from fastattn.ops.attention import attention_forward
    from fastattn.ops.varlen import varlen_forward

    value, dtype, device = seed
    seed = torch.tensor(value, dtype=dtype, device=device)
    q = torch.randn(1, H, 3, D, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        attention_forward(q, q, q, None, 0, False, 0.25, 0.5, seed)
    p = q[0].transpose(0, 1)
    cu = torch.tensor([0, 3], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        varlen_forward(p, p, p, cu, cu, 3, 3, False, 0.25, 0.5, seed)
