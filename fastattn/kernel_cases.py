"""Representative launches for the static kernel report: what a BERT encoder launches.

Each :class:`Case` calls real launchers (``attention_forward`` / ``attention_backward``,
``varlen_forward`` / ``varlen_backward``, the feed-forward ``matmul``) on CPU tensors laid out
as the model lays them out, so the captured launches carry the real specialization:

* attention (padded): Q, K, V are head views of one fused QKV projection output
  (N, L, 3E) -> (N, H, L, D), strides (3LE, D, 3E, 1), as ``SelfAttention`` makes them; the
  output gradient has the output's (N, L, H, D) layout; a key-padding mask is (N, L) bool.
* attention (varlen): the same views of a packed (total, 3E) projection -> (total, H, D); with
  key padding the sequences have different lengths (and a total that is not a multiple of 16).
* GEMMs: the feed-forward products of ``ops/feedforward.py`` at M tokens, E = 768, 4E = 3072.

BERT cases (:func:`bert_cases`): fp16 and bf16, head_dim 64 and 128 (H = 768 / head_dim),
L = 128 and 512, mask none / key_padding / causal, batch 8; GEMMs at M = 8192.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Dict, List, Optional

BATCH = 8
EMBED = 768
HIDDEN = 4 * EMBED
TOKENS = 8192
DTYPES = ("fp16", "bf16")
HEAD_DIMS = (64, 128)
SEQLENS = (128, 512)
MASKS = ("none", "key_padding", "causal")


@dataclasses.dataclass
class Case:
    """``run()`` calls real launchers; every kernel it launches becomes a row with ``labels``
    (``labels["name"]`` becomes part of each row's name)."""
    labels: Dict[str, Any]
    run: Callable[[], Any]
    kernels: Optional[List[str]] = None  # report names to keep (None: all but auxiliary)

    @property
    def name(self) -> str:
        return self.labels["name"]


# Small kernels launched beside the tiled ones; left out of the case rows.
AUXILIARY = ("attention_bwd_preprocess", "attention_dropout_mask")


def torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def _heads_view(proj, heads: int):
    """(..., L, 3E) fused projection -> q, k, v as (..., L, H, D) views."""
    return [t.unflatten(-1, (heads, t.shape[-1] // heads)) for t in proj.chunk(3, dim=-1)]


def _key_lengths(batch: int, seqlen: int) -> List[int]:
    """Ragged lengths like a padded BERT batch: the longest fills L, the others 40-100 %."""
    return [seqlen] + [max(1, (seqlen * (40 + 60 * i // max(batch - 1, 1))) // 100 + 1)
                       for i in range(batch - 1)]


def attention_case(dtype: str, head_dim: int, seqlen: int, mask: str, batch: int = BATCH,
                   embed: int = EMBED, backward: bool = True, dropout_p: float = 0.0) -> Case:
    """Padded attention forward (+ dK/dV and dQ backward) as ``SelfAttention`` launches it."""
    import torch

    from fastattn.ops import attention as ops

    heads = embed // head_dim
    dt = torch_dtype(dtype)

    def run():
        proj = torch.empty(batch, seqlen, 3 * embed, dtype=dt)
        q, k, v = (t.transpose(1, 2) for t in _heads_view(proj, heads))
        keep = None
        if mask == "key_padding":
            lengths = torch.tensor(_key_lengths(batch, seqlen))
            keep = torch.arange(seqlen)[None, :] < lengths[:, None]
        kind = 0 if keep is None else 1
        causal, scale = mask == "causal", head_dim ** -0.5
        seed = torch.zeros(1, dtype=torch.int64) if dropout_p > 0 else None
        out, lse = ops.attention_forward(q, k, v, keep, kind, causal, scale, dropout_p, seed)
        if backward:
            dout = torch.empty(batch, seqlen, heads, head_dim, dtype=dt).transpose(1, 2)
            ops.attention_backward(dout, q, k, v, out, lse, keep, kind, causal, scale,
                                   dropout_p, seed)

    labels = dict(name=f"{dtype}-d{head_dim}-L{seqlen}-{mask}", variant="padded", dtype=dtype,
                  head_dim=head_dim, seqlen=seqlen, mask=mask)
    return Case(labels, run)


def varlen_case(dtype: str, head_dim: int, seqlen: int, mask: str, batch: int = BATCH,
                embed: int = EMBED, backward: bool = True) -> Case:
    """Variable-length attention as the encoder's padding-free path launches it: ``mask`` =
    "key_padding" packs sequences of different lengths, "none" full ones, "causal" full ones
    with a causal mask."""
    import torch

    from fastattn.ops import varlen as ops

    heads = embed // head_dim
    dt = torch_dtype(dtype)
    lengths = _key_lengths(batch, seqlen) if mask == "key_padding" else [seqlen] * batch

    def run():
        total = sum(lengths)
        proj = torch.empty(total, 3 * embed, dtype=dt)
        q, k, v = _heads_view(proj, heads)
        cu = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.int32)
        causal, scale = mask == "causal", head_dim ** -0.5
        out, lse = ops.varlen_forward(q, k, v, cu, cu, max(lengths), max(lengths), causal, scale)
        if backward:
            dout = torch.empty(total, heads, head_dim, dtype=dt)
            ops.varlen_backward(dout, q, k, v, out, lse, cu, cu, max(lengths), max(lengths),
                                causal, scale)

    labels = dict(name=f"{dtype}-d{head_dim}-L{seqlen}-{mask}", variant="varlen", dtype=dtype,
                  head_dim=head_dim, seqlen=seqlen, mask=mask)
    return Case(labels, run)


GEMM_CASES = ("ffn1", "ffn2", "ffn_dx", "ffn_dw")


def gemm_case(case: str, dtype: str, tokens: int = TOKENS, embed: int = EMBED,
              hidden: int = HIDDEN, activation: str = "gelu") -> List[Case]:
    """The feed-forward GEMMs as ``ops/feedforward.py`` launches them (one Case per product):

    * ffn1:   H = X W1^T + b1, A = act(H) (pre-activation H stored)    (M x 4E, K = E)
    * ffn2:   Y = A W2^T + b2 + residual                               (M x E, K = 4E)
    * ffn_dx: dH = (dY W2) * act'(H)  (product "dh", the activation-gradient epilogue) and
              dX = dH W1 (product "dx")
    * ffn_dw: dW1 = dH^T X (product "dw1") and dW2 = dY^T A (product "dw2")   (K = M)
    """
    import torch

    from fastattn.ops.feedforward import matmul

    dt = torch_dtype(dtype)
    m, e, hd = tokens, embed, hidden
    t = lambda *shape: torch.empty(*shape, dtype=dt)  # noqa: E731
    # product -> ((M, N, K), launch); tensors are made when the case runs
    products = {
        "ffn1": [(None, (m, hd, e), lambda: matmul(t(m, e), t(hd, e).t(), f"bias_{activation}",
                                                  bias=t(hd), pre=t(m, hd)))],
        "ffn2": [(None, (m, e, hd), lambda: matmul(t(m, hd), t(e, hd).t(), "bias_residual",
                                                  bias=t(e), residual=t(m, e)))],
        "ffn_dx": [("dh", (m, hd, e), lambda: matmul(t(m, e), t(e, hd), f"{activation}_grad",
                                                     pre=t(m, hd))),
                   ("dx", (m, e, hd), lambda: matmul(t(m, hd), t(hd, e)))],
        "ffn_dw": [("dw1", (hd, e, m), lambda: matmul(t(m, hd).t(), t(m, e))),
                   ("dw2", (e, hd, m), lambda: matmul(t(m, e).t(), t(m, hd)))],
    }[case]
    cases = []
    for product, (pm, pn, pk), run in products:
        name = "-".join(p for p in (case, product, dtype) if p)
        labels = dict(name=name, case=case, product=product, dtype=dtype, m=pm, n=pn, k=pk)
        cases.append(Case(labels, run, kernels=["matmul"]))
    return cases


def bert_cases(dtypes=DTYPES, head_dims=HEAD_DIMS, seqlens=SEQLENS, masks=MASKS,
               gemms=GEMM_CASES) -> List[Case]:
    """Every kernel a BERT encoder launches: attention padded and varlen (forward, dK/dV, dQ)
    over dtype x head_dim x L x mask, and the feed-forward GEMMs."""
    cases = []
    for dtype, d, length, mask in itertools.product(dtypes, head_dims, seqlens, masks):
        cases.append(attention_case(dtype, d, length, mask))
        cases.append(varlen_case(dtype, d, length, mask))
    for case, dtype in itertools.product(gemms, dtypes):
        cases.extend(gemm_case(case, dtype))
    return cases
