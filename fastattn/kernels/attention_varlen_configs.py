"""Launch configurations of the variable-length attention kernels.

The varlen kernels run the padded kernels' tile loops without a mask, so they take the padded
table's unmasked entries (:func:`fastattn.kernels.attention_configs.pick_config` with mask kind
0); the length bucket is chosen from max_seqlen.  ``aot_specs`` lists every configuration the
launcher can pick, for the ahead-of-time compile check (``fastattn kernels``).

Pure Python: importable without triton.
"""
from __future__ import annotations

import itertools
from typing import Iterator, Tuple

from fastattn.kernels.attention_configs import (
    DTYPES, HEAD_DIMS, KERNELS, LENGTH_BUCKETS, AttnConfig, pick_config, smem_limit_for)

PREPROCESS_BLOCK_M = 64
INTERPRETER_PREPROCESS_BLOCK_M = 16


def pick_varlen_config(kernel: str, head_dim: int, dtype: str, max_seqlen: int,
                       smem_limit: int, interpreter: bool = False,
                       dropout: bool = False, device=None) -> AttnConfig:
    """The configuration the launcher uses.  ``max_seqlen`` is max_seqlen_q (fwd, dq) or
    max_seqlen_k (dkdv); ``dropout``: the kernels' DROPOUT variant; ``device``: where the
    tuned table's ``varlen`` entries take precedence (see :mod:`fastattn.tuning`)."""
    return pick_config(kernel, head_dim, dtype, 0, max_seqlen, smem_limit,
                       interpreter=interpreter, mask_layout="none", dropout=dropout,
                       device=device, family="varlen")


def all_configs(capability_major: int) -> Iterator[Tuple[str, int, str, bool, AttnConfig]]:
    """Every (kernel, BLOCK_D, dtype, dropout, config) the launcher can pick, without repeats."""
    limit = smem_limit_for(capability_major)
    seen = set()
    for kernel, d, dtype, bucket, dropout in itertools.product(KERNELS, HEAD_DIMS, DTYPES,
                                                               LENGTH_BUCKETS, (False, True)):
        cfg = pick_varlen_config(kernel, d, dtype, 1 if bucket == "short" else 4096, limit,
                                 dropout=dropout)
        key = (kernel, d, dtype, dropout, cfg)
        if key not in seen:
            seen.add(key)
            yield key


_TENSORS = {
    "fwd": ["Q", "K", "V", "O", "LSE", "CU_Q", "CU_K", "SEED"],
    "bwd_dkdv": ["Q", "K", "V", "DO", "LSE", "DELTA", "DK", "DV", "CU_Q", "CU_K", "SEED"],
    "bwd_dq": ["Q", "K", "V", "DO", "LSE", "DELTA", "DQ", "CU_Q", "CU_K", "SEED"],
}
_N_STRIDES = {"fwd": 8, "bwd_dkdv": 12, "bwd_dq": 10}


def aot_specs(capability_major: int):
    """Ahead-of-time compile specs (see :mod:`fastattn.aot`) for every pickable configuration.
    The delta preprocess is the padded attention's kernel and is not repeated here."""
    ptr_types = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
    for kernel, block_d, dtype, dropout, cfg in all_configs(capability_major):
        sig = {}
        for name in _TENSORS[kernel]:
            if name == "SEED":
                sig[name] = "*i64"
            elif name in ("LSE", "DELTA"):
                sig[name] = "*fp32"
            elif name.startswith("CU_"):
                sig[name] = "*i32"
            else:
                sig[name] = ptr_types[dtype]
        for i in range(_N_STRIDES[kernel]):
            sig[f"s{i}"] = "i32"
        sig.update({"H": "i32", "kv_group": "i32", "total_q": "i32", "max_seqlen_q": "i32",
                    "max_seqlen_k": "i32", "D": "i32", "bottom_right": "i32", "qk_scale": "fp32"})
        if kernel != "fwd":
            sig["sm_scale"] = "fp32"
        sig["dropout_p"] = "fp32"
        for causal in (False,) if dropout else (False, True):
            # sm_90, 2-byte types, head_dim <= 128: every kernel reads through TMA
            flags = dict(CAUSAL=causal, EVEN_D=True,
                         TMA=capability_major >= 9 and dtype != "float32" and block_d <= 128)
            constexprs = dict(flags, PRECISION="tf32x3" if dtype == "float32" else "tf32",
                              DROPOUT=dropout, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                              BLOCK_D=block_d)
            names = "".join(f" {f.lower()}" for f in ("CAUSAL", "TMA") if flags.get(f))
            yield dict(
                kernel=f"varlen_{kernel}",
                fn=f"fastattn.kernels.attention_varlen:varlen_attention_{kernel}_kernel",
                signature=dict(sig, **{k: "constexpr" for k in constexprs}),
                constexprs=constexprs,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                config=(f"D={block_d} {dtype}{' dropout' if dropout else ''}{names} "
                        f"M{cfg.block_m} N{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}"),
                head_dim=block_d,
            )
