"""Launch configurations of the GEMM-with-epilogue kernel (pure Python, no triton import).

A fixed table keyed by dtype and a size bucket of M (token count): small batches get smaller
tiles so that enough programs exist; nothing is tuned per exact shape.  Candidates whose
shared-memory estimate exceeds the device's are dropped before anything is compiled.
``aot_specs`` lists every (epilogue, dtype, config) the launcher can pick for
``fastattn kernels``.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, List, Tuple

DTYPES = ("float32", "float16", "bfloat16")
SMALL_M = 512

# Epilogue switches: name -> (HAS_BIAS, ACTIVATION, STORE_PRE, ACT_GRAD, HAS_RESIDUAL)
EPILOGUES: Dict[str, Tuple[bool, int, bool, int, bool]] = {
    "bias": (True, 0, False, 0, False),
    "bias_relu": (True, 1, True, 0, False),
    "bias_gelu": (True, 2, True, 0, False),
    "bias_gelu_tanh": (True, 3, True, 0, False),
    "bias_residual": (True, 0, False, 0, True),
    "relu_grad": (False, 0, False, 1, False),
    "gelu_grad": (False, 0, False, 2, False),
    "gelu_tanh_grad": (False, 0, False, 3, False),
    "plain": (False, 0, False, 0, False),
}


@dataclasses.dataclass(frozen=True)
class MatmulConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8

    def smem_bytes(self, elem_size: int) -> int:
        return self.num_stages * (self.block_m + self.block_n) * self.block_k * elem_size


INTERPRETER_CONFIG = MatmulConfig(32, 32, 32, 4, 1)


def _candidates(dtype: str, small: bool) -> List[MatmulConfig]:
    # 128 x 64 tiles over 8 warps keep the fp32 accumulator and the epilogue's temporaries
    # in registers; 128 x 128 spills once an activation is fused (``fastattn kernels``).
    # fp32 with 4 warps: BLOCK_K 16, as 64 x 64 x 32 spills on sm_80 once unit strides are
    # specialized (as the JIT does at run time).
    if dtype == "float32":  # 3xTF32 on tensor cores: fp32 tiles, twice the bytes
        return [MatmulConfig(64, 64, 16, 4, 3) if small else MatmulConfig(128, 64, 32, 8, 2),
                MatmulConfig(64, 64, 32, 4, 1)]
    return [MatmulConfig(64, 64, 64, 4, 3) if small else MatmulConfig(128, 64, 64, 8, 3),
            MatmulConfig(64, 64, 64, 4, 2)]


def pick_config(m: int, dtype: str, smem_limit: int, interpreter: bool = False) -> MatmulConfig:
    if interpreter:
        return INTERPRETER_CONFIG
    elem = 4 if dtype == "float32" else 2
    for cfg in _candidates(dtype, m <= SMALL_M):
        if cfg.smem_bytes(elem) <= smem_limit:
            return cfg
    raise ValueError(f"no GEMM configuration fits {smem_limit} bytes of shared memory")


def aot_specs(capability_major: int):
    from fastattn.kernels.attention_configs import smem_limit_for

    ptr = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
    limit = smem_limit_for(capability_major)
    seen = set()
    for (name, flags), dtype, m in itertools.product(EPILOGUES.items(), DTYPES, (1, 4096)):
        cfg = pick_config(m, dtype, limit)
        if (name, dtype, cfg) in seen:
            continue
        seen.add((name, dtype, cfg))
        has_bias, act, store_pre, act_grad, has_res = flags
        sig = {n: ptr[dtype] for n in ("A", "B", "C", "BIAS", "PRE", "RESIDUAL")}
        sig.update({n: "i32" for n in ("M", "N", "K")})
        sig.update({f"s{i}": "i32" for i in range(10)})
        constexprs = dict(HAS_BIAS=has_bias, ACTIVATION=act, STORE_PRE=store_pre,
                          ACT_GRAD=act_grad, HAS_RESIDUAL=has_res,
                          PRECISION="tf32x3" if dtype == "float32" else "tf32",
                          BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                          GROUP_M=cfg.group_m)
        sig.update({k: "constexpr" for k in constexprs})
        yield dict(kernel=f"matmul_{name}", fn="fastattn.kernels.matmul:matmul_epilogue_kernel",
                   signature=sig, constexprs=constexprs, num_warps=cfg.num_warps,
                   num_stages=cfg.num_stages,
                   config=(f"{dtype} M{cfg.block_m} N{cfg.block_n} K{cfg.block_k} "
                           f"w{cfg.num_warps} s{cfg.num_stages}"),
                   head_dim=None)
