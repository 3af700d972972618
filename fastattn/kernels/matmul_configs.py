"""Launch configurations of the GEMM-with-epilogue kernels (pure Python, no triton import).

Two kernels: ``kernel="tma"`` (``matmul_tma.py``: sm_90, fp16/bf16, TMA-addressable operands)
and ``kernel="pointer"`` (``matmul.py``: sm_80, fp32, any strides).  The static table is keyed
by kernel, dtype and a size bucket of M (token count); a tuned table (``fastattn.tuning``,
family ``"matmul"``) can replace it per GEMM case, including the choice of cuBLAS over Triton.

Case keys (the tuned table's keys for family ``"matmul"``), one per GEMM shape::

    "<epilogue>:<dtype>:<layout>:m<M bucket>:k<K>:n<N>"
    e.g. "bias_gelu:float16:nt:m8192:k768:n3072"     (the BERT-base FFN1 at 8192 tokens)

``epilogue`` is a key of :data:`EPILOGUES`; ``layout`` two letters for A and B, ``n`` = read as
stored (row-major), ``t`` = read as the transpose of a row-major matrix (``nt``: X @ W^T with
nn.Linear's weight, ``nn``: dY @ W, ``tn``: dH^T @ X); the M bucket is M rounded up to a power
of two (at least 64), K and N are exact.  A tuned config is a dict: ``{"backend": "cublas"}``,
or ``{"backend": "triton", "kernel": "tma"|"pointer", "block_m", "block_n", "block_k",
"num_warps", "num_stages", "group_m"}``.  :func:`tune_candidates` lists what ``fastattn tune``
should time for a case (cuBLAS and every Triton config that fits); ``aot_specs`` lists every
(epilogue, dtype, config) the launcher can pick for ``fastattn kernels``.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, Iterator, List, Optional, Tuple

from fastattn.enums import ACTIVATION_NAMES

DTYPES = ("float32", "float16", "bfloat16")
HALF_DTYPES = ("float16", "bfloat16")
SMALL_M = 512
# Activation name -> the kernels' ACTIVATION / ACT_GRAD code (kernels/matmul.py).
ACTIVATIONS = {name: int(code) for name, code in ACTIVATION_NAMES.items()}

# Epilogue switches: name -> (HAS_BIAS, ACTIVATION, STORE_PRE, ACT_GRAD, HAS_RESIDUAL)
EPILOGUES: Dict[str, Tuple[bool, int, bool, int, bool]] = {
    "bias": (True, 0, False, 0, False),
    "bias_relu": (True, 1, True, 0, False),
    "bias_gelu": (True, 2, True, 0, False),
    "bias_gelu_tanh": (True, 3, True, 0, False),
    "bias_relu_nopre": (True, 1, False, 0, False),
    "bias_gelu_nopre": (True, 2, False, 0, False),
    "bias_gelu_tanh_nopre": (True, 3, False, 0, False),
    "bias_residual": (True, 0, False, 0, True),
    "relu_grad": (False, 0, False, 1, False),
    "gelu_grad": (False, 0, False, 2, False),
    "gelu_tanh_grad": (False, 0, False, 3, False),
    "plain": (False, 0, False, 0, False),
}
# The operand layouts the feed-forward launches each epilogue with (A_T, B_T): the forward
# reads nn.Linear weights transposed, the backward's dH and dX read them as stored, and the
# weight gradients read dH^T / dY^T.
LAYOUTS = {"nt": (False, True), "nn": (False, False), "tn": (True, False), "tt": (True, True)}
FEEDFORWARD_LAYOUTS = {name: (("nn", "tn") if name == "plain" else
                              ("nn",) if name.endswith("_grad") else ("nt",))
                       for name in EPILOGUES}


@dataclasses.dataclass(frozen=True)
class MatmulConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    kernel: str = "pointer"  # "pointer" (matmul.py) or "tma" (matmul_tma.py)

    def smem_bytes(self, elem_size: int) -> int:
        ring = self.num_stages * (self.block_m + self.block_n) * self.block_k * elem_size
        # the TMA kernel stages its C / PRE tile in shared memory for the bulk store
        store = self.block_m * self.block_n * elem_size if self.kernel == "tma" else 0
        return ring + store

    def as_dict(self) -> dict:
        return dict(backend="triton", **dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "MatmulConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


INTERPRETER_CONFIG = MatmulConfig(32, 32, 32, 4, 1)
INTERPRETER_TMA_CONFIG = MatmulConfig(32, 32, 32, 4, 1, kernel="tma")


def _pointer_candidates(dtype: str, small: bool) -> List[MatmulConfig]:
    # 128 x 64 tiles over 8 warps keep the fp32 accumulator and the epilogue's temporaries
    # in registers; 128 x 128 spills once an activation is fused (``fastattn kernels``).
    # fp32 with 4 warps: BLOCK_K 16, as 64 x 64 x 32 spills on sm_80 once unit strides are
    # specialized (as the JIT does at run time).
    if dtype == "float32":  # 3xTF32 on tensor cores: fp32 tiles, twice the bytes
        return [MatmulConfig(64, 64, 16, 4, 3) if small else MatmulConfig(128, 64, 32, 8, 2),
                MatmulConfig(64, 64, 32, 4, 1)]
    return [MatmulConfig(64, 64, 64, 4, 3) if small else MatmulConfig(128, 64, 64, 8, 3),
            MatmulConfig(64, 64, 64, 4, 2)]


# TMA kernel, sm_90.  128 x 128 x 128 over two warpgroups, 3 stages (224 KiB with the store
# tile): 8 wgmma per K step against ~80 bookkeeping instructions (< 0.012 per multiply-add on
# sm_90a), no spills with any epilogue.  128 x 256 tiles spill with a fused GELU.  Small M:
# 64-row tiles so that enough programs exist.
TMA_LARGE = [MatmulConfig(128, 128, 128, 8, 3, kernel="tma"),
             MatmulConfig(128, 128, 64, 8, 4, kernel="tma"),
             MatmulConfig(128, 128, 64, 8, 2, kernel="tma")]
TMA_SMALL = [MatmulConfig(64, 128, 64, 4, 4, kernel="tma"),
             MatmulConfig(64, 64, 64, 4, 3, kernel="tma")]
TMA_TUNE = TMA_LARGE + TMA_SMALL


def _fits(cfgs, elem, smem_limit):
    return [c for c in cfgs if c.smem_bytes(elem) <= smem_limit]


def pick_config(m: int, dtype: str, smem_limit: int, interpreter: bool = False,
                tma: bool = False) -> MatmulConfig:
    """The static table's config for a GEMM with M rows (``tma``: the TMA kernel's)."""
    if interpreter:
        return INTERPRETER_TMA_CONFIG if tma else INTERPRETER_CONFIG
    elem = 4 if dtype == "float32" else 2
    small = m <= SMALL_M
    if tma:
        cands = (TMA_SMALL + TMA_LARGE) if small else TMA_LARGE + TMA_SMALL
    else:
        cands = _pointer_candidates(dtype, small)
    fitting = _fits(cands, elem, smem_limit)
    if not fitting:
        raise ValueError(f"no GEMM configuration fits {smem_limit} bytes of shared memory")
    return fitting[0]


def m_bucket(m: int) -> int:
    return max(64, 1 << max(0, m - 1).bit_length())


def case_key(epilogue: str, dtype: str, layout: str, m: int, k: int, n: int) -> str:
    """The tuned table's key of one GEMM (format in the module docstring)."""
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {tuple(EPILOGUES)}, got {epilogue!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {layout!r}")
    return f"{epilogue}:{dtype}:{layout}:m{m_bucket(m)}:k{k}:n{n}"


def parse_case_key(key: str) -> dict:
    epilogue, dtype, layout, m, k, n = key.split(":")
    return dict(epilogue=epilogue, dtype=dtype, layout=layout, m=int(m[1:]), k=int(k[1:]),
                n=int(n[1:]))


def tune_candidates(case: str, smem_limit: int = 232448, tma: bool = True) -> List[dict]:
    """What ``fastattn tune`` times for one case key, as tuned-table config dicts: cuBLAS
    first, then every Triton config whose shared memory fits (TMA configs when ``tma``, i.e.
    on sm_90 with half-precision operands, then the pointer kernel's)."""
    c = parse_case_key(case)
    elem = 4 if c["dtype"] == "float32" else 2
    triton = list(TMA_TUNE) if tma and c["dtype"] in HALF_DTYPES else []
    triton += _pointer_candidates(c["dtype"], small=True) + _pointer_candidates(c["dtype"],
                                                                                small=False)
    seen, out = set(), [{"backend": "cublas"}]
    for cfg in _fits(triton, elem, smem_limit):
        if cfg not in seen:
            seen.add(cfg)
            out.append(cfg.as_dict())
    return out


def feedforward_cases(tokens: int, embed: int, hidden: int, dtype: str, activation: str,
                      residual: bool = True, training: bool = True) -> Dict[str, str]:
    """The case keys of the GEMMs a feed-forward block launches: ffn1, ffn2 and, when
    ``training``, the backward's ffn_dh (dY @ W2 with the activation gradient), ffn_dx,
    ffn_dw1, ffn_dw2."""
    cases = {"ffn1": case_key(f"bias_{activation}" + ("" if training else "_nopre"), dtype,
                              "nt", tokens, embed, hidden),
             "ffn2": case_key("bias_residual" if residual else "bias", dtype, "nt", tokens,
                              hidden, embed)}
    if training:
        cases.update(ffn_dh=case_key(f"{activation}_grad", dtype, "nn", tokens, embed, hidden),
                     ffn_dx=case_key("plain", dtype, "nn", tokens, hidden, embed),
                     ffn_dw1=case_key("plain", dtype, "tn", hidden, tokens, embed),
                     ffn_dw2=case_key("plain", dtype, "tn", embed, tokens, hidden))
    return cases


def _spec(name: str, dtype: str, cfg: MatmulConfig, layout: str) -> dict:
    ptr = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
    has_bias, act, store_pre, act_grad, has_res = EPILOGUES[name]
    sig = {n: ptr[dtype] for n in ("A", "B", "C", "BIAS", "PRE", "RESIDUAL")}
    sig.update({n: "i32" for n in ("M", "N", "K")})
    constexprs = dict(HAS_BIAS=has_bias, ACTIVATION=act, STORE_PRE=store_pre,
                      ACT_GRAD=act_grad, HAS_RESIDUAL=has_res)
    if cfg.kernel == "tma":
        sig.update({n: "i32" for n in ("stride_a", "stride_b", "stride_c", "stride_p",
                                       "stride_r", "NUM_PROGRAMS")})
        a_t, b_t = LAYOUTS[layout]
        constexprs.update(A_T=a_t, B_T=b_t)
        fn = "fastattn.kernels.matmul_tma:matmul_tma_kernel"
    else:
        sig.update({f"s{i}": "i32" for i in range(10)})
        constexprs.update(PRECISION="tf32x3" if dtype == "float32" else "tf32")
        fn = "fastattn.kernels.matmul:matmul_epilogue_kernel"
    constexprs.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                      GROUP_M=cfg.group_m)
    sig.update({k: "constexpr" for k in constexprs})
    layout_tag = f" {layout}" if cfg.kernel == "tma" else ""
    return dict(kernel=f"matmul_{name}", fn=fn, signature=sig, constexprs=constexprs,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                config=(f"{dtype} {cfg.kernel}{layout_tag} M{cfg.block_m} N{cfg.block_n} "
                        f"K{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}"),
                head_dim=None)


def aot_specs(capability_major: int) -> Iterator[dict]:
    """Every configuration the static table can pick: the pointer kernel on every arch, and
    on sm_90 the TMA kernel for half precision in each layout the feed-forward launches."""
    from fastattn.kernels.attention_configs import smem_limit_for

    limit = smem_limit_for(capability_major)
    seen = set()
    for name, dtype, m in itertools.product(EPILOGUES, DTYPES, (1, 4096)):
        picks = [(pick_config(m, dtype, limit), "nn")]
        if capability_major == 9 and dtype in HALF_DTYPES:
            picks += [(pick_config(m, dtype, limit, tma=True), lay)
                      for lay in FEEDFORWARD_LAYOUTS[name]]
        for cfg, layout in picks:
            if (name, dtype, cfg, layout) not in seen:
                seen.add((name, dtype, cfg, layout))
                yield _spec(name, dtype, cfg, layout)
