"""Public functions: torch-compatible SDPA semantics and clear errors on bad input."""
import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn.backends import BackendUnavailableError
from tests.helpers import DEVICE, DTYPES, assert_close_to_reference


def _qkv(n=2, h=2, lq=17, lk=23, d=32, dtype=torch.float32):
    return (torch.randn(n, h, lq, d, device=DEVICE, dtype=dtype),
            torch.randn(n, h, lk, d, device=DEVICE, dtype=dtype),
            torch.randn(n, h, lk, d, device=DEVICE, dtype=dtype))


def _torch_sdpa_reference(q, k, v, mask, causal, scale, dtype):
    """torch's SDPA; it refuses a mask together with is_causal, so causal is folded in."""
    if mask is not None and causal:
        tril = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        mask = mask & tril if mask.dtype == torch.bool else mask.masked_fill(~tril, float("-inf"))
        causal = False
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(dtype)
    return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask,
                                          is_causal=causal, scale=scale)


SDPA_CASES = {
    "no_mask": lambda q, k: None,
    "bool_2d": lambda q, k: torch.rand(q.shape[2], k.shape[2], device=DEVICE) > 0.4,
    "bool_4d_with_empty_row": lambda q, k: torch.cat(
        [torch.zeros(q.shape[0], 1, 1, k.shape[2], dtype=torch.bool, device=DEVICE),
         torch.rand(q.shape[0], 1, q.shape[2] - 1, k.shape[2], device=DEVICE) > 0.4], dim=2),
    "float_additive": lambda q, k: torch.randn(q.shape[0], q.shape[1], q.shape[2], k.shape[2],
                                               device=DEVICE),
    "float_with_neg_inf": lambda q, k: torch.where(
        torch.rand(1, 1, q.shape[2], k.shape[2], device=DEVICE) > 0.5, 0.0, float("-inf")),
}


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", list(SDPA_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_matches_torch_where_finite(case, causal, dtype):
    q, k, v = _qkv(dtype=dtype)
    mask = SDPA_CASES[case](q, k)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)
    out = fastattn.scaled_dot_product_attention(q, k, v, mask, is_causal=causal, scale=0.3,
                                                backend="triton")
    hp = _torch_sdpa_reference(q, k, v, mask, causal, 0.3, torch.float64)
    lp = _torch_sdpa_reference(q, k, v, mask, causal, 0.3, dtype)
    assert torch.isfinite(out).all()  # rows torch leaves NaN are 0 here
    assert_close_to_reference(out, hp, lp)  # compared wherever torch's result is finite


def test_sdpa_three_dim_inputs_and_torch_backend():
    q, k, v = (t[:, 0] for t in _qkv())
    out = fastattn.scaled_dot_product_attention(q, k, v, backend="triton")
    ref = F.scaled_dot_product_attention(q, k, v)
    assert out.shape == ref.shape == (2, 17, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out_torch = fastattn.scaled_dot_product_attention(q, k, v, backend="torch")
    torch.testing.assert_close(out_torch, ref, atol=1e-5, rtol=1e-5)


def test_sdpa_dropout_runs_on_every_backend_and_keeps_shape():
    q, k, v = _qkv()
    for backend in ("triton", "torch"):
        out = fastattn.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend=backend)
        assert out.shape == q.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, fastattn.scaled_dot_product_attention(q, k, v))


BAD_INPUTS = [
    ("rank", lambda q, k, v: (q[0], k, v), {}, ValueError, "q must have 4 dims"),
    ("not_tensor", lambda q, k, v: (q.tolist(), k, v), {}, TypeError, "q must be a torch.Tensor"),
    ("mixed_dtype", lambda q, k, v: (q, k.half(), v), {}, TypeError, "share one dtype"),
    ("mixed_device", lambda q, k, v: (q, k.to("meta"), v), {}, ValueError, "one device"),
    ("heads", lambda q, k, v: (q, k[:, :1], v), {}, ValueError, "same number of heads"),
    ("batch", lambda q, k, v: (q, k[:1], v[:1]), {}, ValueError, "batch size N"),
    ("kv_length", lambda q, k, v: (q, k, v[:, :, :3]), {}, ValueError, "same length L_k"),
    ("head_dim_mismatch", lambda q, k, v: (q, k[..., :16], v), {}, ValueError, "head_dim"),
    ("integer", lambda q, k, v: (q.long(), k.long(), v.long()), {}, TypeError, "floating"),
]


@pytest.mark.parametrize("name,make,kwargs,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_qkv(name, make, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastattn.attention(*make(*_qkv()), backend="triton", **kwargs)


@pytest.mark.parametrize("mask,match", [
    (torch.ones(3, 23, dtype=torch.bool), r"key-padding mask of shape \(N, L_k\)"),
    (torch.ones(2, 2, 17, 5, dtype=torch.bool), "not broadcastable"),
    (torch.ones(1, 2, 2, 17, 23, dtype=torch.bool), "at most 4 dims"),
], ids=["keypad_wrong_batch", "not_broadcastable", "five_dims"])
def test_bad_mask_shape(mask, match):
    with pytest.raises(ValueError, match=match):
        fastattn.attention(*_qkv(), mask.to(DEVICE), backend="triton")


def test_bad_mask_type_and_device():
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        fastattn.attention(*_qkv(), [[1, 0]], backend="triton")
    with pytest.raises(ValueError, match="mask is on meta"):
        fastattn.attention(*_qkv(), torch.ones(2, 23, device="meta"), backend="triton")


@pytest.mark.parametrize("d", [8, 20, 264])
def test_unsupported_head_dim(d):
    with pytest.raises(ValueError, match="head_dim must be a multiple of 8 between 16 and 256"):
        fastattn.attention(*_qkv(d=d), backend="triton")
    assert fastattn.attention(*_qkv(d=d), backend="torch").shape[-1] == d  # torch path: any


def test_bad_scale_and_backend():
    with pytest.raises(TypeError, match="scale must be a Python float"):
        fastattn.attention(*_qkv(), scale=torch.tensor(0.1), backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastattn.attention(*_qkv(), backend="fast")


def test_float64_runs_on_torch_path_only():
    q, k, v = _qkv(dtype=torch.float64)
    assert fastattn.attention(q, k, v, backend="torch").dtype == torch.float64
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        fastattn.attention(q, k, v, backend="triton")


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = (t.cpu() for t in _qkv())
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        fastattn.attention(q, k, v, backend="triton")
    assert fastattn.attention(q, k, v).shape == q.shape  # auto falls back to torch on CPU


def test_cuda_backend_absent_is_a_clear_error():
    q, k, v = _qkv()
    with pytest.raises(BackendUnavailableError, match="backend='cuda'"):
        fastattn.attention(q.cpu(), k.cpu(), v.cpu(), backend="cuda")
