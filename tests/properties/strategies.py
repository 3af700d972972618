"""Strategies for what users pass to fastattn: shapes, dtypes, memory layouts, masks of every
kind and broadcast shape, packed batches.  Sizes stay small (the Triton kernels run under the
interpreter on CPU) but odd.  ``examples(n)`` scales a test's example count with the profile."""
import os

import torch
from hypothesis import strategies as st

from tests.helpers import CUDA, DEVICE

SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
HEAD_DIMS = [16, 24, 32, 40, 64]  # multiples of 8 in the kernels' range
LAYOUTS = ("contiguous", "blhd", "strided", "fused_qkv")


def examples(n: int) -> int:
    return n * SCALE


lengths = st.integers(1, 80)


@st.composite
def attention_shapes(draw, max_bh: int = 4):
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, max(1, max_bh // n)))
    lq = draw(lengths)
    lk = draw(st.one_of(st.just(lq), lengths))
    d = draw(st.sampled_from(HEAD_DIMS))
    return n, h, lq, lk, d


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def make_qkv(shape, dtype, layout: str, seed: int):
    """q (N, H, L_q, D), k, v (N, H, L_k, D) in ``layout``: contiguous; views of (N, L, H, D)
    tensors (the projection's layout); slices of larger buffers with odd strides; or, for
    self-attention shapes, views into one fused (N, L, 3, H, D) projection."""
    n, h, lq, lk, d = shape
    g = _gen(seed)

    def rand(*s):
        return torch.randn(*s, generator=g).to(dtype).to(DEVICE)
    if layout == "fused_qkv" and lq == lk:
        qkv = rand(n, lq, 3, h, d)
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))
    if layout in ("blhd", "fused_qkv"):
        return (rand(n, lq, h, d).transpose(1, 2), rand(n, lk, h, d).transpose(1, 2),
                rand(n, lk, h, d).transpose(1, 2))
    if layout == "strided":  # every other row, an offset inside a wider last dim
        return (rand(n, h, 2 * lq, d + 8)[:, :, ::2, 3:3 + d],
                rand(n, h, lk, d + 5)[..., 5:],
                rand(n, h, 2 * lk, d)[:, :, 1::2])
    return rand(n, h, lq, d), rand(n, h, lk, d), rand(n, h, lk, d)


@st.composite
def keep_masks(draw, n, h, lq, lk):
    """A mask for :func:`fastattn.attention` (nonzero = keep): key padding (prefix or not,
    fully padded and fully real rows) as (N, L_k) or (N, 1, 1, L_k); a full (L_q, L_k) or
    (N, H, L_q, L_k) pattern with fully masked rows; expanded (stride-0) views; bool, 0/1 int,
    or 0/1 float."""
    kind = draw(st.sampled_from(["none", "key_padding_2d", "key_padding_4d", "full_2d",
                                 "full_4d", "expanded"]))
    dtype = draw(st.sampled_from([torch.bool, torch.int32, torch.float32]))
    seed = draw(st.integers(0, 2 ** 16))
    g = _gen(seed)
    if kind == "none":
        return None, kind
    if kind.startswith("key_padding") or kind == "expanded":
        lens = torch.randint(0, lk + 1, (n,), generator=g)
        keep = torch.arange(lk)[None, :] < lens[:, None]
        if draw(st.booleans()):  # not a prefix: holes
            keep = keep ^ (torch.rand(n, lk, generator=g) < 0.2)
        if kind == "key_padding_2d":
            mask = keep
        elif kind == "key_padding_4d":
            mask = keep[:, None, None, :]
        else:  # the same key-padding row expanded over heads and queries: stride 0
            mask = keep[:, None, None, :].expand(n, h, lq, lk)
    else:
        keep = torch.rand(lq, lk, generator=g) < 0.7
        keep[torch.randint(0, lq, (1,), generator=g)] = False  # a fully masked row
        mask = keep[None, None] if kind == "full_2d" else \
            (torch.rand(n, h, lq, lk, generator=g) < 0.7)
    return mask.to(dtype).to(DEVICE), kind


@st.composite
def sdpa_masks(draw, n, h, lq, lk):
    """A mask for :func:`fastattn.scaled_dot_product_attention`: None, bool (True = attend)
    or additive float, of shape (L_q, L_k), (N, 1, 1, L_k) or (N, H, L_q, L_k)."""
    kind = draw(st.sampled_from(["none", "bool", "float"]))
    shape = draw(st.sampled_from([(lq, lk), (n, 1, 1, lk), (n, h, lq, lk)]))
    g = _gen(draw(st.integers(0, 2 ** 16)))
    if kind == "none":
        return None
    if kind == "bool":
        return (torch.rand(*shape, generator=g) < 0.75).to(DEVICE)
    return (torch.randn(*shape, generator=g) * 2).to(DEVICE)


@st.composite
def packed_lengths(draw, max_batch: int = 4):
    """Sequence lengths of a packed batch, with empty and full (= the longest) sequences."""
    lens = draw(st.lists(st.integers(0, 48), min_size=1, max_size=max_batch))
    if draw(st.booleans()) and max(lens) > 0:
        lens[draw(st.integers(0, len(lens) - 1))] = max(lens)
    return lens
