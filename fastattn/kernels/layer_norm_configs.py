"""Launch configurations of the LayerNorm kernels: a fixed table keyed by the hidden size.

The hidden size N (elements per row) picks a bucket, per kernel (forward, backward).  Up to
``MAX_FUSED_HIDDEN`` a whole row lives in registers: the tile is (BLOCK_M rows, BLOCK_N = next
bucket >= N columns), with several rows per tile for short rows so that a program still moves a
useful amount of data.
Above it the looped kernels stream each row in ``LOOPED.block_n`` chunks, so registers stay
bounded for any N.  768 (BERT-base) and 1024 (BERT-large) fall in the 1024 bucket.

Presence of weight, bias and residual is a runtime flag of the kernels, not a constexpr: the
branch is uniform per program and free in a memory-bound kernel, and it keeps the compiled
variants to one per (kernel, dtype, bucket).  ``aot_specs`` enumerates all of them (51 per
architecture), which ``fastattn kernels`` compiles for sm_80 and sm_90a.

Pure Python: importable without triton.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

DTYPES = ("float32", "float16", "bfloat16")
MAX_FUSED_HIDDEN = 8192
REDUCE_BLOCK_P = 64  # partial-sum rows summed per step by the dW / dB reduction
REDUCE_BLOCK_N = 32  # columns per reduction program
REDUCE_NUM_WARPS = 4
INTERPRETER_SM_COUNT = 2  # stands in for the multiprocessor count on the CPU interpreter
TARGET_WARPS_PER_SM = 32  # backward: enough resident programs per SM to hide memory latency


@dataclasses.dataclass(frozen=True)
class LayerNormConfig:
    block_m: int  # rows per tile
    block_n: int  # columns per tile (a whole row, or one chunk when looped)
    num_warps: int
    looped: bool = False
    num_stages: int = 1  # no tl.dot: nothing to software-pipeline


# (largest hidden size of the bucket, config), per kernel.  Forward tiles hold ~1-2 K elements;
# backward keeps x, dy, w and two accumulators per element, so its tiles are smaller per thread
# (at most 8 elements): ptxas -v shows no spills on sm_80 / sm_90a for any of them.
BUCKETS = {
    "fwd": (
        (64, LayerNormConfig(16, 64, 4)),
        (256, LayerNormConfig(8, 256, 4)),
        (512, LayerNormConfig(2, 512, 4)),
        (1024, LayerNormConfig(1, 1024, 4)),
        (2048, LayerNormConfig(1, 2048, 8)),
        (4096, LayerNormConfig(1, 4096, 8)),
        (MAX_FUSED_HIDDEN, LayerNormConfig(1, 8192, 16)),
    ),
    "bwd": (
        (64, LayerNormConfig(8, 64, 4)),
        (256, LayerNormConfig(4, 256, 4)),
        (512, LayerNormConfig(2, 512, 4)),
        (1024, LayerNormConfig(1, 1024, 4)),
        (2048, LayerNormConfig(1, 2048, 8)),
        (4096, LayerNormConfig(1, 4096, 16)),
        (MAX_FUSED_HIDDEN, LayerNormConfig(1, 8192, 32)),
    ),
}
LOOPED = LayerNormConfig(1, 4096, 8, looped=True)
KERNELS = tuple(BUCKETS)


def tuned_key(hidden: int, kernel: str, dtype: str) -> str:
    """The case key of a launch in the tuned tables, e.g. ``fwd|n768|float16``."""
    return f"{kernel}|n{hidden}|{dtype}"


def pick_config(hidden: int, kernel: str = "fwd", dtype: str = None,
                device=None) -> LayerNormConfig:
    """The configuration the ``kernel`` ("fwd" or "bwd") launcher uses for rows of ``hidden``;
    with ``device`` and ``dtype``, a tuned table's entry for that exact hidden size first
    (see :mod:`fastattn.tuning`)."""
    if hidden < 1:
        raise ValueError(f"hidden size must be positive, got {hidden}")
    if device is not None and dtype is not None:
        from fastattn import tuning

        tuned = tuning.lookup("layer_norm", tuned_key(hidden, kernel, dtype), device)
        if tuned:
            try:
                cfg = LayerNormConfig(**tuned)
            except TypeError:  # an entry of another version's fields
                cfg = None
            if cfg is not None and (cfg.looped or cfg.block_n >= hidden):
                return cfg
    return _static_config(hidden, kernel)


def tune_candidates(hidden: int, kernel: str) -> list:
    """What ``fastattn tune`` times: the static choice, then the same tile width with other
    rows per tile and warp counts."""
    static = _static_config(hidden, kernel)
    if static.looped:
        return [static]
    out = [static]
    for block_m in (1, 2, 4, 8):
        for warps in (2, 4, 8, 16):
            if block_m * static.block_n > 8192 or block_m * static.block_n < warps * 32:
                continue
            cfg = LayerNormConfig(block_m, static.block_n, warps)
            if cfg not in out:
                out.append(cfg)
    return out


def _static_config(hidden: int, kernel: str) -> LayerNormConfig:
    for limit, cfg in BUCKETS[kernel]:
        if hidden <= limit:
            return cfg
    return LOOPED


def backward_grid(rows: int, cfg: LayerNormConfig, sm_count: int) -> Tuple[int, int]:
    """(programs, rows per program) of the backward kernel.

    Each program owns a contiguous group of rows (a multiple of BLOCK_M) and writes one row of
    dW / dB partial sums, so the partial buffer is (programs, hidden) fp32.  The count is tied
    to the device (about TARGET_WARPS_PER_SM warps per multiprocessor), not to the data, and
    the reduction order is fixed: results are bit-identical from run to run.
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    target = sm_count * max(1, TARGET_WARPS_PER_SM // cfg.num_warps)
    row_blocks = -(-rows // cfg.block_m)
    per_program = -(-row_blocks // min(target, row_blocks)) * cfg.block_m
    return -(-rows // per_program), per_program


def all_configs(kernel: str):
    """Every distinct configuration the ``kernel`` launcher can pick."""
    return [cfg for _, cfg in BUCKETS[kernel]] + [LOOPED]


def aot_specs(capability_major: int):
    """Ahead-of-time compile specs (see :mod:`fastattn.aot`) for every pickable configuration."""
    for dtype in DTYPES:
        p = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}[dtype]
        for kernel in KERNELS:
            for cfg in all_configs(kernel):
                yield _kernel_spec(kernel, dtype, cfg)
        yield dict(
            kernel="layer_norm_reduce",
            fn="fastattn.kernels.layer_norm:layer_norm_reduce_kernel",
            signature={"PART": "*fp32", "OUT0": p, "OUT1": p, "P": "i32", "N": "i32",
                       "BLOCK_P": "constexpr", "BLOCK_N": "constexpr"},
            constexprs={"BLOCK_P": REDUCE_BLOCK_P, "BLOCK_N": REDUCE_BLOCK_N},
            num_warps=REDUCE_NUM_WARPS, num_stages=1,
            config=f"{dtype} P{REDUCE_BLOCK_P} N{REDUCE_BLOCK_N} w{REDUCE_NUM_WARPS}",
        )


def _kernel_spec(kernel: str, dtype: str, cfg: LayerNormConfig) -> dict:
    p = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}[dtype]
    if kernel == "fwd":
        sig = {"X": p, "RES": p, "W": p, "B": p, "Y": p, "XSUM": p,
               "MEAN": "*fp32", "RSTD": "*fp32",
               "stride_x": "i32", "stride_r": "i32", "stride_y": "i32", "stride_s": "i32",
               "M": "i32", "N": "i32", "eps": "fp32",
               "has_residual": "i32", "has_weight": "i32", "has_bias": "i32",
               "store_sum": "i32"}
    else:
        sig = {"DY": p, "X": p, "W": p, "MEAN": "*fp32", "RSTD": "*fp32", "DX": p,
               "DW_PART": "*fp32", "DB_PART": "*fp32",
               "stride_dy": "i32", "stride_x": "i32", "stride_dx": "i32",
               "M": "i32", "N": "i32", "rows_per_program": "i32",
               "has_weight": "i32", "compute_dw": "i32", "compute_db": "i32"}
    constexprs = {"BLOCK_N": cfg.block_n} if cfg.looped else {
        "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n}
    sig.update({k: "constexpr" for k in constexprs})
    suffix = "_looped" if cfg.looped else ""
    return dict(
        kernel=f"layer_norm_{kernel}",
        fn=f"fastattn.kernels.layer_norm:layer_norm_{kernel}{suffix}_kernel",
        signature=sig, constexprs=constexprs,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        config=(f"{dtype} M{cfg.block_m} N{cfg.block_n}{' looped' if cfg.looped else ''} "
                f"w{cfg.num_warps}"),
    )
