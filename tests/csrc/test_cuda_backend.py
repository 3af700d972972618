"""backend="cuda": the CUDA C++ attention forward (with the Triton backward), LayerNorm and
bias + activation against float64 references.  Needs a CUDA device and the built extension;
the op-registration checks at the bottom run everywhere."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn import backends
from fastattn.ops import attention_cuda
from fastattn.ops.attention_cuda import cuda_attention, cuda_attention_fwd_op, kernel_mask_args
from fastattn.ops.key_lengths import key_padding_lengths
from fastattn.reference import attention_reference
from tests.helpers import ATOL, CUDA, GRAD_FACTOR, assert_close_to_reference

HAS_EXTENSION = CUDA and backends.cuda_extension_error() is None
needs_gpu = pytest.mark.skipif(not HAS_EXTENSION,
                               reason="needs a CUDA device and the built fastattn._C extension")
DEV = torch.device("cuda")
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
NONE, KEEP, ADD = 0, 1, 2

# (N, H, L_q, L_k, D): odd lengths 1 / 17 / 70 / 129, L_q != L_k, head dims 32 / 64 / 128 and
# sizes padded up to them (16, 40, 96).
SHAPES = [
    (1, 1, 1, 1, 32),
    (2, 2, 17, 17, 64),
    (1, 2, 70, 129, 128),
    (2, 1, 129, 70, 64),
    (1, 3, 17, 70, 32),
    (1, 1, 129, 129, 96),
    (2, 1, 70, 17, 40),
    (1, 1, 17, 33, 16),
]


def _inputs(n, h, lq, lk, d, dtype):
    return (torch.randn(n, h, lq, d, device=DEV, dtype=dtype),
            torch.randn(n, h, lk, d, device=DEV, dtype=dtype),
            torch.randn(n, h, lk, d, device=DEV, dtype=dtype))


def _mask(kind, n, h, lq, lk):
    """(mask, mask_kind, causal) for a named case; keep-masks follow the guide (0 = masked)."""
    g = torch.Generator().manual_seed(1)
    if kind == "none":
        return None, NONE, False
    if kind == "causal":
        return None, NONE, True
    if kind == "key_padding_2d":  # (N, L_k) bool, batch 0 fully padded
        m = torch.rand(n, lk, generator=g) > 0.3
        m[0] = False
        return m.to(DEV), KEEP, False
    if kind == "key_padding_prefix":  # (N, L_k) bool prefixes: an odd length, then all real
        lengths = torch.tensor([lk // 2 + 1 if i % 2 == 0 else lk for i in range(n)])
        return (torch.arange(lk)[None, :] < lengths[:, None]).to(DEV), KEEP, False
    if kind == "key_padding_4d_int":
        return (torch.rand(n, 1, 1, lk, generator=g) > 0.4).to(torch.int32).to(DEV), KEEP, False
    if kind == "full_bool":  # (N, 1, L_q, L_k), row 0 fully masked
        m = torch.rand(n, 1, lq, lk, generator=g) > 0.5
        m[:, :, 0] = False
        return m.to(DEV), KEEP, False
    if kind == "per_head_float_keep":
        return (torch.rand(1, h, lq, lk, generator=g) > 0.5).float().to(DEV), KEEP, False
    if kind == "causal_and_padding":
        return (torch.rand(n, 1, 1, lk, generator=g) > 0.3).to(DEV), KEEP, True
    if kind == "additive":  # (L_q, L_k) float, -inf on some entries, one row all -inf
        m = torch.randn(lq, lk, generator=g)
        m[torch.rand(lq, lk, generator=g) > 0.7] = float("-inf")
        m[lq // 2] = float("-inf")
        return m[None, None].to(DEV), ADD, False
    if kind == "additive_causal":
        return torch.randn(n, h, lq, lk, generator=g).to(DEV), ADD, True
    raise ValueError(kind)


MASK_KINDS = ["none", "causal", "key_padding_2d", "key_padding_prefix", "key_padding_4d_int",
              "full_bool",
              "per_head_float_keep", "causal_and_padding", "additive", "additive_causal"]


def _reference(q, k, v, mask, kind, causal, scale, dtype):
    ts = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    keep = mask if kind == KEEP else None
    add = mask.to(dtype) if kind == ADD else None
    return ts, attention_reference(*ts, keep, causal=causal, scale=scale, additive_mask=add)


def _reference_lse(q, k, mask, kind, causal, scale):
    """logsumexp of the masked scores in float64 (+inf where every score is -inf)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale
    if kind == ADD:
        s = s + mask.double()
    if kind == KEEP:
        m = mask[:, None, None, :] if mask.dim() == 2 else mask
        s = s.masked_fill(m == 0, -1e10)
    if causal:
        lq, lk = s.shape[-2:]
        s = s.masked_fill(torch.ones(lq, lk, dtype=torch.bool, device=s.device).triu(1),
                          float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)


def _check(q, k, v, mask=None, kind=NONE, causal=False, scale=None, backward=True):
    """CUDA forward (+ Triton backward) vs float64 and same-precision references."""
    qkv = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = cuda_attention(*qkv, mask, kind, causal, scale)
    hp_in, hp = _reference(q, k, v, mask, kind, causal, scale, torch.float64)
    lp_in, lp = _reference(q, k, v, mask, kind, causal, scale, q.dtype)
    assert out.shape == q.shape[:3] + (v.shape[-1],) and out.dtype == q.dtype
    assert_close_to_reference(out, hp, lp, name="out")
    if backward:
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, qkv, dout)
        hp_grads = torch.autograd.grad(hp, hp_in, dout.double(), allow_unused=True)
        lp_grads = torch.autograd.grad(lp, lp_in, dout, allow_unused=True)
        for name, g, ghp, glp in zip("qkv", grads, hp_grads, lp_grads):
            assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=f"d{name}")
    return out


@needs_gpu
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}H{}Lq{}Lk{}D{}".format(*s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward(shape, dtype, mask_kind):
    n, h, lq, lk, d = shape
    q, k, v = _inputs(n, h, lq, lk, d, dtype)
    mask, kind, causal = _mask(mask_kind, n, h, lq, lk)
    # an all -inf additive row has no gradient in the float64 reference either (NaN there)
    _check(q, k, v, mask, kind, causal, backward=mask_kind != "additive")


@needs_gpu
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lse_matches_float64_logsumexp(dtype, mask_kind):
    n, h, lq, lk, d = 2, 2, 70, 129, 64
    q, k, v = _inputs(n, h, lq, lk, d, dtype)
    mask, kind, causal = _mask(mask_kind, n, h, lq, lk)
    out, lse = cuda_attention_fwd_op(q, k, v, mask, kind, causal, 1.0 / math.sqrt(d))
    assert lse.shape == (n, h, lq) and lse.dtype == torch.float32 and lse.is_contiguous()
    expected = _reference_lse(q, k, mask, kind, causal, None)
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isposinf(lse), torch.isposinf(expected))
    # rtol covers fully masked rows (lse ~ -1e10, where one fp32 ulp is 1024)
    torch.testing.assert_close(lse[finite].double(), expected[finite], rtol=1e-5, atol=5e-3)


@needs_gpu
def test_all_minus_inf_row_gives_zero_output_and_infinite_lse():
    q, k, v = _inputs(1, 2, 17, 70, 32, torch.float16)
    mask = torch.zeros(1, 1, 17, 70, device=DEV)
    mask[..., 3, :] = float("-inf")
    out, lse = cuda_attention_fwd_op(q, k, v, mask, ADD, False, 0.2)
    assert torch.count_nonzero(out[:, :, 3]) == 0
    assert torch.isposinf(lse[:, :, 3]).all() and torch.isfinite(lse[:, :, :3]).all()


@needs_gpu
@pytest.mark.parametrize("lk", [70, 129])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_row_is_mean_of_v_over_real_keys(dtype, lk):
    """Past-the-end keys of the last 64-key block are excluded entirely: a fully masked row
    averages exactly the L_k real rows of V, and its scores get no gradient."""
    q, k, v = _inputs(2, 2, 5, lk, 64, dtype)
    mask = torch.ones(2, lk, dtype=torch.bool, device=DEV)
    mask[1] = False
    qkv = [t.clone().requires_grad_() for t in (q, k, v)]
    out = cuda_attention(*qkv, mask, KEEP, False, None)
    mean_v = v[1].double().mean(dim=1, keepdim=True).expand(2, 5, 64)
    torch.testing.assert_close(out[1].double(), mean_v, atol=ATOL[dtype] * 10, rtol=0)
    dq, dk, dv = torch.autograd.grad(out, qkv, torch.randn_like(out))
    assert torch.count_nonzero(dq[1]) == 0 and torch.count_nonzero(dk[1]) == 0
    assert torch.count_nonzero(dv[1]) > 0
    _check(q, k, v, mask, KEEP)


@needs_gpu
def test_fully_masked_row_under_causal_averages_visible_keys():
    q, k, v = _inputs(1, 1, 100, 100, 32, torch.float16)
    mask = torch.zeros(1, 1, 100, 100, dtype=torch.bool, device=DEV)
    mask[..., :20, :] = True  # rows 20.. are fully masked
    out = _check(q, k, v, mask, KEEP, causal=True)
    expected = torch.stack([v[0, 0, : i + 1].double().mean(0) for i in range(20, 100)])
    torch.testing.assert_close(out[0, 0, 20:].double(), expected, atol=1e-2, rtol=0)


@needs_gpu
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.int8, torch.int16,
                                        torch.int32, torch.int64, torch.float16, torch.bfloat16,
                                        torch.float32, torch.float64], ids=str)
def test_keep_mask_of_every_dtype_reads_the_same(mask_dtype):
    q, k, v = _inputs(2, 2, 17, 70, 64, torch.float16)
    keep = torch.rand(2, 1, 17, 70, device=DEV) > 0.4
    ref, _ = cuda_attention_fwd_op(q, k, v, keep, KEEP, False, 0.125)
    out, _ = cuda_attention_fwd_op(q, k, v, keep.to(mask_dtype) * 3 if mask_dtype != torch.bool
                                   else keep, KEEP, False, 0.125)
    assert torch.equal(out, ref)
    _check(q, k, v, keep.to(mask_dtype), KEEP, backward=False)


def _mixed_key_padding(n_rows, lk):
    """(n_rows, L_k) bool keep rows, cycling through: fully real, fully padded, prefixes of
    length 1, 17 and 65 (odd, across the 64-key blocks), a row that is not a prefix."""
    lengths = [lk, 0, 1, 17, 65, lk // 2 + 1]
    rows = [torch.arange(lk) < min(lengths[i % 6], lk) for i in range(n_rows)]
    mask = torch.stack(rows)
    for i in range(5, n_rows, 6):
        mask[i, 0] = False  # a hole at key 0: not a prefix
        mask[i, lk - 1] = True
    return mask.to(DEV)


def _expected_lengths(mask):
    out = []
    for row in mask.cpu().tolist():
        length = sum(row)
        out.append(length if row == [True] * length + [False] * (len(row) - length) else -1)
    return out


@needs_gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lq,lk,d", [(70, 129, 64), (129, 70, 32), (17, 200, 128), (64, 64, 40),
                                     (1, 65, 64)], ids=lambda x: str(x))
@pytest.mark.parametrize("dtype", DTYPES)
def test_key_padding_lengths_path_prefix_and_mask_rows_in_one_batch(dtype, lq, lk, d, causal):
    """A (N, L_k) keep mask runs as lengths: prefix rows end their key walk at the last real
    key, the fully padded row attends uniformly over all L_k keys, the non-prefix row reads its
    mask; all against float64, and against the dense-mask kernel reading the same mask."""
    n, h = 6, 2
    q, k, v = _inputs(n, h, lq, lk, d, dtype)
    mask = _mixed_key_padding(n, lk)
    keep, lengths = kernel_mask_args(mask, KEEP, n, lk)
    assert lengths is not None and lengths.tolist() == _expected_lengths(mask)
    assert -1 in lengths.tolist() or lk == 1
    out = _check(q, k, v, mask, KEEP, causal)
    dense = mask[:, None, None, :].expand(n, h, lq, lk).contiguous()  # the kKeep kernel
    assert kernel_mask_args(dense, KEEP, n, lk)[1] is None
    scale = 1.0 / math.sqrt(d)
    out_dense, lse_dense = cuda_attention_fwd_op(q, k, v, dense, KEEP, causal, scale)
    torch.testing.assert_close(out.detach(), out_dense, rtol=0, atol=ATOL[dtype])
    _, lse = cuda_attention_fwd_op(q, k, v, mask, KEEP, causal, scale)
    torch.testing.assert_close(lse, lse_dense, rtol=1e-5, atol=1e-3)
    expected = _reference_lse(q, k, mask, KEEP, causal, None)
    torch.testing.assert_close(lse.double(), expected, rtol=1e-5, atol=5e-3)
    # the fully padded row (index 1): uniform over all L_k keys (up to the diagonal if causal)
    rows = torch.arange(lq, device=DEV)
    visible = (torch.arange(lk, device=DEV)[None, :] <= rows[:, None]) if causal else \
        torch.ones(lq, lk, dtype=torch.bool, device=DEV)
    visible = visible.double()
    mean_v = (visible @ v[1].double()) / visible.sum(-1, keepdim=True)
    torch.testing.assert_close(out[1].double(), mean_v, atol=ATOL[dtype] * 10, rtol=0)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_key_padding_forms_and_dtypes_read_the_same(dtype):
    """(N, L_k), (N, 1, 1, L_k) and stride-0 expanded key-padding masks of any dtype take the
    lengths path and agree bit for bit; nonzero (incl. negative, NaN) keeps, +-0 masks."""
    n, h, lq, lk = 6, 3, 33, 150
    q, k, v = _inputs(n, h, lq, lk, 64, dtype)
    mask = _mixed_key_padding(n, lk)
    ref = cuda_attention_fwd_op(q, k, v, mask, KEEP, False, 0.125)
    values = torch.where(mask, torch.tensor(-2.5, device=DEV), torch.tensor(-0.0, device=DEV))
    values[mask & (torch.arange(lk, device=DEV) % 7 == 0)] = float("nan")
    for m in (mask.to(torch.int64) * 3, mask[:, None, None, :].to(torch.uint8),
              mask[:, None, None, :].expand(n, h, lq, lk), values, values.half()):
        assert kernel_mask_args(m, KEEP, n, lk)[1] is not None
        out = cuda_attention_fwd_op(q, k, v, m, KEEP, False, 0.125)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@needs_gpu
def test_key_lengths_argument_is_checked():
    pytest.importorskip("fastattn._C")
    fwd = torch.ops.fastattn.cuda_attention_fwd_kernel
    q, k, v = _inputs(2, 1, 5, 7, 64, torch.float16)
    keep = torch.ones(2, 7, dtype=torch.bool, device=DEV)
    lengths = key_padding_lengths(keep)
    out, _ = fwd(q, k, v, keep, KEEP, False, 0.1, lengths)
    torch.testing.assert_close(out, fwd(q, k, v, None, NONE, False, 0.1)[0],
                               rtol=0, atol=ATOL[torch.float16])
    with pytest.raises(ValueError, match="key_lengths must be"):
        fwd(q, k, v, keep, KEEP, False, 0.1, lengths.long())
    with pytest.raises(ValueError, match="key_lengths must be"):
        fwd(q, k, v, keep, KEEP, False, 0.1, lengths[:1])
    with pytest.raises(ValueError, match="key_lengths needs a keep mask"):
        fwd(q, k, v, keep.half(), ADD, False, 0.1, lengths)
    with pytest.raises(ValueError, match=r"\(N, L_k\)"):
        fwd(q, k, v, keep[:, None, None, :], KEEP, False, 0.1, lengths)
    with pytest.raises(TypeError, match="bool or uint8"):
        fwd(q, k, v, keep.float(), KEEP, False, 0.1, lengths)


@needs_gpu
@pytest.mark.parametrize("mask_dtype", [torch.float16, torch.bfloat16, torch.float32,
                                        torch.float64], ids=str)
def test_additive_mask_dtypes(mask_dtype):
    q, k, v = _inputs(1, 2, 33, 70, 32, torch.bfloat16)
    mask = torch.randn(1, 2, 33, 70, device=DEV).to(mask_dtype)
    _check(q, k, v, mask, ADD, backward=False)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_misaligned_inputs(dtype):
    """q/k/v as views of a packed (N, L, 3, H, D) projection; a last-dim-strided k; a q whose
    data pointer is not 16-byte aligned; a strided key-padding mask."""
    n, h, l, d = 2, 3, 70, 64
    packed = torch.randn(n, l, 3, h, d, device=DEV, dtype=dtype)
    q, k, v = (packed[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    mask = torch.rand(n, 2 * l, device=DEV)[:, ::2] > 0.3
    _check(q, k, v, mask, KEEP)
    k_t = torch.randn(n, h, d, l, device=DEV, dtype=dtype).transpose(-1, -2)
    _check(q, k_t, v)
    flat = torch.randn(n * h * l * d + 1, device=DEV, dtype=dtype)
    q_off = flat[1:].view(n, h, l, d)
    assert q_off.data_ptr() % 16 != 0
    _check(q_off, k, v, None, NONE, causal=True)


@needs_gpu
def test_output_layout_and_expanded_mask():
    q, k, v = _inputs(2, 4, 17, 23, 64, torch.float16)
    row = torch.rand(2, 1, 1, 23, device=DEV) > 0.5
    out_row, lse_row = cuda_attention_fwd_op(q, k, v, row, KEEP, False, 0.125)
    out_exp, lse_exp = cuda_attention_fwd_op(q, k, v, row.expand(2, 4, 17, 23), KEEP, False,
                                             0.125)
    assert torch.equal(out_row, out_exp) and torch.equal(lse_row, lse_exp)
    assert out_row.transpose(1, 2).is_contiguous()  # (N, L_q, H, D) memory


@needs_gpu
def test_scale_and_long_sequence():
    q, k, v = _inputs(1, 2, 300, 513, 64, torch.float16)
    _check(q, k, v, None, NONE, causal=True, scale=0.37)
    _check(q, k, v, None, NONE, causal=False)


@needs_gpu
def test_forward_is_deterministic():
    q, k, v = _inputs(2, 2, 129, 129, 128, torch.bfloat16)
    a = cuda_attention_fwd_op(q, k, v, None, NONE, True, 0.1)
    b = cuda_attention_fwd_op(q, k, v, None, NONE, True, 0.1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@needs_gpu
def test_fp32_and_large_head_dim_are_routed_to_triton():
    from fastattn.ops.attention import triton_attention

    for dtype, d in ((torch.float32, 64), (torch.float16, 256)):
        q, k, v = _inputs(1, 2, 17, 33, d, dtype)
        assert not attention_cuda.runs_cuda_kernel(q)
        torch.testing.assert_close(cuda_attention(q, k, v, None, NONE, False, None),
                                   triton_attention(q, k, v, None, NONE, False, None),
                                   rtol=0, atol=0)


@needs_gpu
def test_public_api_backend_cuda():
    q, k, v = _inputs(2, 2, 17, 70, 64, torch.float16)
    mask = torch.rand(2, 70, device=DEV) > 0.3
    out = fastattn.attention(q, k, v, mask, backend="cuda")
    expected, _ = cuda_attention_fwd_op(q, k, v, mask, KEEP, False, 0.125)
    assert torch.equal(out, expected)


@needs_gpu
def test_torch_compile_sees_one_op():
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 17, 33, 64, torch.float16))

    def f(q, k, v):
        return cuda_attention(q, k, v, None, NONE, True, 0.125).float().sum()

    eager = f(q, k, v)
    compiled = torch.compile(f, fullgraph=True)(q, k, v)
    torch.testing.assert_close(compiled, eager)
    grads = torch.autograd.grad(compiled, (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


@needs_gpu
def test_bad_inputs_name_the_argument():
    pytest.importorskip("fastattn._C")
    fwd = torch.ops.fastattn.cuda_attention_fwd_kernel
    q, k, v = _inputs(1, 1, 5, 7, 64, torch.float16)
    with pytest.raises(ValueError, match="head_dim"):
        fwd(*_inputs(1, 1, 5, 7, 136, torch.float16), None, NONE, False, 0.1)
    with pytest.raises(TypeError, match="q must be"):
        fwd(q.float(), k.float(), v.float(), None, NONE, False, 0.1)
    with pytest.raises(TypeError, match="k and v"):
        fwd(q, k.bfloat16(), v, None, NONE, False, 0.1)
    with pytest.raises(ValueError, match="k must have shape"):
        fwd(q, k[:, :, :, :32], v, None, NONE, False, 0.1)
    with pytest.raises(ValueError, match="mask of shape"):
        fwd(q, k, v, torch.ones(1, 1, 5, 6, device=DEV), KEEP, False, 0.1)
    with pytest.raises(TypeError, match="additive mask"):
        fwd(q, k, v, torch.ones(1, 7, dtype=torch.bool, device=DEV), ADD, False, 0.1)
    with pytest.raises(ValueError, match="mask must be given"):
        fwd(q, k, v, None, KEEP, False, 0.1)
    with pytest.raises(ValueError, match="k must be a CUDA tensor"):
        fwd(q, k.cpu(), v, None, NONE, False, 0.1)
    with pytest.raises(ValueError, match="residual"):
        x = torch.randn(4, 8, device=DEV)
        torch.ops.fastattn.cuda_layer_norm_fwd(x, x[:, :4], None, None, 1e-5)
    with pytest.raises(ValueError, match="activation"):
        torch.ops.fastattn.cuda_bias_act_fwd(torch.randn(4, 8, device=DEV), None, "swish")


# ----------------------------------------------------------------------------- LayerNorm

LN_SHAPES = [(1, 768), (17, 1000), (3, 5, 1023), (129, 64), (2000, 256), (2, 4096), (4, 17)]
LN_DTYPES = [pytest.param(torch.float32, id="fp32")] + DTYPES


def _layer_norm_ref(x, residual, weight, bias, eps, dtype):
    ts = [None if t is None else t.detach().to(dtype).requires_grad_()
          for t in (x, residual, weight, bias)]
    h = ts[0] if ts[1] is None else ts[0] + ts[1]
    y = F.layer_norm(h, (x.shape[-1],), ts[2], ts[3], eps)
    return ts, y


@needs_gpu
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shape", LN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", LN_DTYPES)
def test_layer_norm_forward_backward(shape, dtype, residual):
    cols = shape[-1]
    x = torch.randn(shape, device=DEV, dtype=dtype) * 3 + 1
    r = torch.randn(shape, device=DEV, dtype=dtype) if residual else None
    w = torch.randn(cols, device=DEV, dtype=dtype)
    b = torch.randn(cols, device=DEV, dtype=dtype)
    eps = 1e-5
    y, mean, rstd = torch.ops.fastattn.cuda_layer_norm_fwd(x, r, w, b, eps)
    assert mean.shape == shape[:-1] and mean.dtype == torch.float32
    hp_in, hp = _layer_norm_ref(x, r, w, b, eps, torch.float64)
    lp_in, lp = _layer_norm_ref(x, r, w, b, eps, dtype)
    assert_close_to_reference(y, hp, lp, name="y")
    h64 = x.double() if r is None else x.double() + r.double()
    torch.testing.assert_close(mean.double(), h64.mean(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rstd.double(), (h64.var(-1, unbiased=False) + eps).rsqrt(),
                               rtol=1e-4, atol=0)

    dy = torch.randn_like(y)
    dx, dw, db = torch.ops.fastattn.cuda_layer_norm_bwd(dy, x, r, w, mean, rstd, True)
    hp_grads = torch.autograd.grad(hp, [t for t in hp_in if t is not None], dy.double())
    lp_grads = torch.autograd.grad(lp, [t for t in lp_in if t is not None], dy)
    names = ["dx"] + (["dresidual"] if residual else []) + ["dweight", "dbias"]
    ours = [dx] + ([dx] if residual else []) + [dw, db]
    for name, g, ghp, glp in zip(names, ours, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=name)


@needs_gpu
def test_layer_norm_without_affine_and_misaligned():
    x = torch.randn(33 * 768 + 1, device=DEV, dtype=torch.float16)[1:].view(33, 768)
    assert x.data_ptr() % 16 != 0
    y, mean, rstd = torch.ops.fastattn.cuda_layer_norm_fwd(x, None, None, None, 1e-6)
    hp = F.layer_norm(x.double(), (768,), eps=1e-6)
    lp = F.layer_norm(x, (768,), eps=1e-6)
    assert_close_to_reference(y, hp, lp, name="y")
    dy = torch.randn_like(y)
    dx, dw, db = torch.ops.fastattn.cuda_layer_norm_bwd(dy, x, None, None, mean, rstd, False)
    assert dw.numel() == 0 and db.numel() == 0
    x64 = x.double().requires_grad_()
    ghp, = torch.autograd.grad(F.layer_norm(x64, (768,), eps=1e-6), x64, dy.double())
    x16 = x.clone().requires_grad_()
    glp, = torch.autograd.grad(F.layer_norm(x16, (768,), eps=1e-6), x16, dy)
    assert_close_to_reference(dx, ghp, glp, factor=GRAD_FACTOR, name="dx")


@needs_gpu
def test_layer_norm_backward_is_deterministic():
    x = torch.randn(3000, 1024, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(1024, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(1024, device=DEV, dtype=torch.bfloat16)
    y, mean, rstd = torch.ops.fastattn.cuda_layer_norm_fwd(x, None, w, b, 1e-5)
    dy = torch.randn_like(y)
    runs = [torch.ops.fastattn.cuda_layer_norm_bwd(dy, x, None, w, mean, rstd, True)
            for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(a, c) for a, c in zip(runs[0], other))


@needs_gpu
def test_layer_norm_meta_shapes():
    x = torch.empty(3, 5, 64, device="meta", dtype=torch.float16)
    w = torch.empty(64, device="meta", dtype=torch.float16)
    y, mean, rstd = torch.ops.fastattn.cuda_layer_norm_fwd(x, None, w, None, 1e-5)
    assert y.shape == x.shape and mean.shape == (3, 5) and rstd.dtype == torch.float32
    dx, dw, db = torch.ops.fastattn.cuda_layer_norm_bwd(x, x, None, w, mean, rstd, False)
    assert dx.shape == x.shape and dw.shape == (64,) and db.shape == (0,)


# --------------------------------------------------------------------- bias + activation

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
}


@needs_gpu
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [(1, 8), (17, 3072), (3, 70, 129), (1000, 1023)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", LN_DTYPES)
def test_bias_act_forward_backward(dtype, act, shape, with_bias):
    x = torch.randn(shape, device=DEV, dtype=dtype) * 2
    bias = torch.randn(shape[-1], device=DEV, dtype=dtype) if with_bias else None
    fn = ACTIVATIONS[act]
    y = torch.ops.fastattn.cuda_bias_act_fwd(x, bias, act)

    def reference(dtype_):
        pre = x.to(dtype_) if bias is None else x.to(dtype_) + bias.to(dtype_)
        pre = pre.detach().requires_grad_()
        return pre, fn(pre)

    pre_hp, hp = reference(torch.float64)
    pre_lp, lp = reference(dtype)
    assert_close_to_reference(y, hp, lp, name="y")
    dy = torch.randn_like(y)
    dx = torch.ops.fastattn.cuda_bias_act_bwd(dy, x, bias, act)
    ghp, = torch.autograd.grad(hp, pre_hp, dy.double())
    glp, = torch.autograd.grad(lp, pre_lp, dy)
    assert_close_to_reference(dx, ghp, glp, factor=GRAD_FACTOR, name="dx")


@needs_gpu
def test_bias_act_bad_bias_shape():
    x = torch.randn(4, 8, device=DEV)
    with pytest.raises(ValueError, match="bias must have shape"):
        torch.ops.fastattn.cuda_bias_act_fwd(x, torch.randn(7, device=DEV), "relu")


# ------------------------------------------------------------- runs without a GPU as well

def test_fake_op_gives_triton_layout():
    q = torch.empty(2, 3, 17, 64, device="meta", dtype=torch.float16)
    k = torch.empty(2, 3, 70, 64, device="meta", dtype=torch.float16)
    out, lse = cuda_attention_fwd_op(q, k, k, None, NONE, False, 0.125)
    assert out.shape == (2, 3, 17, 64) and out.transpose(1, 2).is_contiguous()
    assert lse.shape == (2, 3, 17) and lse.dtype == torch.float32


def test_key_padding_masks_become_lengths_and_others_pass_through():
    n, h, lq, lk = 3, 2, 5, 9
    rows = torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [0, 1] + [1] * 7])
    for mask in (rows, rows.bool()[:, None, None, :], rows[:, None, None, :].expand(n, h, lq, lk),
                 rows.float()[:, None, :].expand(n, lq, lk)[:, None]):
        keep, lengths = kernel_mask_args(mask, KEEP, n, lk)
        assert keep.dtype == torch.bool and keep.shape == (n, lk) and keep.is_contiguous()
        assert torch.equal(keep, rows != 0) and lengths.tolist() == [9, 4, -1]
    one_row = kernel_mask_args(rows[1], KEEP, n, lk)  # (L_k,): the same row for every sequence
    assert one_row[0].shape == (n, lk) and one_row[1].tolist() == [4, 4, 4]
    signed = torch.tensor([[-0.0, 1.0, float("nan")], [2.0, -1.0, 0.0]])
    keep, lengths = kernel_mask_args(signed, KEEP, 2, 3)
    assert keep.tolist() == [[False, True, True], [True, True, False]]
    assert lengths.tolist() == [-1, 2]
    per_query = torch.arange(lq)[:, None] >= torch.arange(lk)[None, :]
    for mask, kind in ((per_query.expand(n, 1, lq, lk), KEEP),  # varies along L_q
                       (torch.ones(1, h, 1, lk), KEEP),  # varies along heads
                       (rows.float(), ADD), (None, NONE)):
        passed, lengths = kernel_mask_args(mask, kind, n, lk)
        assert passed is mask and lengths is None


def test_routing_rule():
    def t(dtype, d):
        return torch.empty(1, 1, 1, d, device="meta", dtype=dtype)

    assert attention_cuda.runs_cuda_kernel(t(torch.float16, 128))
    assert attention_cuda.runs_cuda_kernel(t(torch.bfloat16, 40))
    assert not attention_cuda.runs_cuda_kernel(t(torch.float32, 64))
    assert not attention_cuda.runs_cuda_kernel(t(torch.float16, 136))
    assert not attention_cuda.runs_cuda_kernel(t(torch.float16, 64), mask_kind=3)  # torch bool


def test_cuda_backend_on_cpu_tensors_is_refused():
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(backends.BackendUnavailableError, match="cuda"):
        fastattn.attention(q, q, q, backend="cuda")


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_module_on_the_cuda_backend(dtype):
    """fastattn.LayerNorm(backend="cuda") with the fused residual, against float64 torch."""
    import fastattn

    ln = fastattn.LayerNorm(768, backend="cuda").to(DEV, dtype)
    x, r = (torch.randn(4, 37, 768, device=DEV, dtype=dtype, requires_grad=True)
            for _ in range(2))
    out = ln(x, residual=r)
    dy = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, r, ln.weight, ln.bias), dy)

    def ref(dt):
        ts = [t.detach().to(dt).requires_grad_() for t in (x, r, ln.weight, ln.bias)]
        y = torch.nn.functional.layer_norm(ts[0] + ts[1], (768,), ts[2], ts[3], ln.eps)
        return y, torch.autograd.grad(y, ts, dy.to(dt))

    hp, hp_grads = ref(torch.float64)
    lp, lp_grads = ref(dtype)
    assert_close_to_reference(out, hp, lp)
    for g, ghp, glp in zip(grads, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR)


@needs_gpu
@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh"])
def test_feedforward_module_on_the_cuda_backend(act):
    """fastattn.FeedForward(backend="cuda"): cuBLAS GEMMs + the CUDA bias/activation kernel."""
    import fastattn

    ff = fastattn.FeedForward(64, 4, act, backend="cuda").to(DEV, torch.float16)
    ref = fastattn.FeedForward(64, 4, act, backend="torch").to(DEV, torch.float64)
    ref.load_state_dict(ff.state_dict())
    x = torch.randn(3, 33, 64, device=DEV, dtype=torch.float16, requires_grad=True)
    out = ff(x)
    dy = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *ff.parameters()], dy)
    x64 = x.detach().double().requires_grad_()
    hp = ref(x64)
    hp_grads = torch.autograd.grad(hp, [x64, *ref.parameters()], dy.double())
    lp_mod = fastattn.FeedForward(64, 4, act, backend="torch").to(DEV, torch.float16)
    lp_mod.load_state_dict(ff.state_dict())
    x16 = x.detach().requires_grad_()
    lp = lp_mod(x16)
    lp_grads = torch.autograd.grad(lp, [x16, *lp_mod.parameters()], dy)
    assert_close_to_reference(out, hp, lp)
    for g, ghp, glp in zip(grads, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR)
