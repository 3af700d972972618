"""Tensors of more than 2^31 elements: rows past element 2^31 get the right values.

An int32 ``row * stride`` wraps there, so each check compares rows on both sides of it, and
the rows past it, with a float64 reference computed on those rows only:

* packed (varlen) attention, forward and backward, over 2.11 M tokens x 16 heads x 64
  (2.16e9 elements per tensor, ~35 GiB in all);
* padded attention with a full (1, 1, 50000, 48000) bool mask (2.4e9 mask elements):
  the output and dQ of the first and last query rows;
* the dropout-mask kernel writing a (1, 1, 50000, 48000) mask: its last rows equal the
  same rows of a 16-key mask (the keep mask depends on the row and key only).

The large sizes need a CUDA GPU with enough free memory and are skipped otherwise; the same
checks run at a small size everywhere (under the interpreter on CPU), so the harness itself
is exercised in CI.  The static side of the same property (every address product is 64-bit)
is tests/test_address_width.py.
"""
import pytest
import torch

import fastattn
from fastattn.ops.attention import dropout_keep_mask
from fastattn.reference import attention_reference
from tests.helpers import CUDA, DEVICE, GRAD_FACTOR, assert_close_to_reference

TWO_31 = 2 ** 31
GiB = 2 ** 30


def _large(min_free_gib: float):
    """Skip unless a CUDA GPU with ``min_free_gib`` free memory is present."""
    if not CUDA:
        pytest.skip("needs a CUDA GPU: tensors of more than 2^31 elements")
    free, _ = torch.cuda.mem_get_info()
    if free < min_free_gib * GiB:
        pytest.skip(f"needs {min_free_gib} GiB of free GPU memory, {free / GiB:.1f} GiB free")


SIZES = ["small", "over_2_31"]


@pytest.mark.parametrize("size", SIZES)
def test_varlen_forward_backward_past_2_31_elements(size):
    if size == "small":
        heads, d, seqlen, n_seq, dtype = 1, 16, 19, 3, torch.float32
    else:
        _large(44)
        heads, d, seqlen, n_seq, dtype = 16, 64, 100, 21100, torch.float16
    total = n_seq * seqlen  # large: 2.11 M tokens, 2.16e9 elements per tensor
    if size != "small":  # over a hundred sequences lie wholly past element 2^31
        assert total * heads * d > TWO_31 + 100 * seqlen * heads * d
    q, k, v = (torch.randn(total, heads, d, device=DEVICE, dtype=dtype).requires_grad_()
               for _ in range(3))
    cu = torch.arange(0, total + 1, seqlen, device=DEVICE, dtype=torch.int32)
    out = fastattn.varlen_attention(q, k, v, cu, cu, seqlen, seqlen, causal=True,
                                    backend="triton")
    dout = torch.randn_like(out)
    out.backward(dout)
    # the first sequence, the one holding element 2^31 (or the middle one), the last one
    crossing = min(TWO_31 // (heads * d), total // 2) // seqlen
    for b in sorted({0, crossing, n_seq - 1}):
        rows = slice(b * seqlen, (b + 1) * seqlen)

        def reference(dt):
            ts = [t.detach()[rows].to("cpu", dt).transpose(0, 1)[None].requires_grad_()
                  for t in (q, k, v)]
            r = attention_reference(*ts, causal=True)
            grads = torch.autograd.grad(
                r, ts, dout[rows].to("cpu", dt).transpose(0, 1)[None])
            return r[0].transpose(0, 1), [g[0].transpose(0, 1) for g in grads]

        hp, hp_grads = reference(torch.float64)
        lp, lp_grads = reference(dtype)
        assert_close_to_reference(out.detach()[rows], hp, lp, name=f"out of sequence {b}")
        for name, t, ghp, glp in zip("qkv", (q, k, v), hp_grads, lp_grads):
            assert_close_to_reference(t.grad[rows], ghp, glp, factor=GRAD_FACTOR,
                                      name=f"d{name} of sequence {b}")


@pytest.mark.parametrize("size", SIZES)
def test_full_mask_past_2_31_elements(size):
    """Output and dQ of the first and last query rows under a full bool mask whose last rows
    start past element 2^31 (scale 0.5: peaked rows, so a wrong mask row changes them)."""
    if size == "small":
        lq, lk, d, dtype = 70, 45, 16, torch.float32
    else:
        _large(12)
        lq, lk, d, dtype = 50000, 48000, 64, torch.float16
        assert (lq - 8) * lk > TWO_31
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    q = torch.randn(1, 1, lq, d, device=DEVICE, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(1, 1, lk, d, device=DEVICE, dtype=dtype, generator=gen)
    v = torch.randn(1, 1, lk, d, device=DEVICE, dtype=dtype, generator=gen)
    mask = torch.randint(0, 10, (1, 1, lq, lk), device=DEVICE, dtype=torch.uint8,
                         generator=gen) != 0
    out = fastattn.attention(q, k, v, mask, scale=0.5, backend="triton")
    dout = torch.randn_like(out)
    out.backward(dout)
    rows = torch.cat([torch.arange(4), torch.arange(lq - 4, lq)]).to(DEVICE)

    def reference(dt):
        qr = q.detach()[:, :, rows].to("cpu", dt).requires_grad_()
        kv = [t.to("cpu", dt) for t in (k, v)]
        r = attention_reference(qr, *kv, mask[:, :, rows].cpu(), scale=0.5)
        return r, torch.autograd.grad(r, qr, dout[:, :, rows].to("cpu", dt))[0]

    hp, dq_hp = reference(torch.float64)
    lp, dq_lp = reference(dtype)
    assert_close_to_reference(out.detach()[:, :, rows], hp, lp, name="out rows")
    assert_close_to_reference(q.grad[:, :, rows], dq_hp, dq_lp, factor=GRAD_FACTOR,
                              name="dq rows")


@pytest.mark.parametrize("size", SIZES)
def test_dropout_mask_past_2_31_elements(size):
    lq, lk = (70, 45) if size == "small" else (50000, 48000)
    if size != "small":
        _large(6)
        assert (lq - 8) * lk > TWO_31
    seed = torch.tensor([12345], dtype=torch.int64, device=DEVICE)
    wide = dropout_keep_mask(seed, (1, 1, lq, lk), 0.25)
    narrow = dropout_keep_mask(seed, (1, 1, lq, 16), 0.25)
    for rows in (slice(0, 8), slice(lq - 8, lq)):
        assert torch.equal(wide[0, 0, rows, :16], narrow[0, 0, rows]), rows
    kept = wide[0, 0, -8:].float().mean().item()
    assert 0.65 < kept < 0.85, kept  # the last rows hold a keep mask, not stale memory
