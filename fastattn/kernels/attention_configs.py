"""Launch configurations of the attention kernels: a fixed table, not per-length autotuning.

A configuration is chosen from (kernel, head_dim bucket, dtype, mask kind, length bucket).  BERT
batches change their padded length from batch to batch, so nothing is re-tuned for a new exact
length: lengths fall in two buckets (short: <= 64, long) and the table answers in O(1).  Every
candidate's shared memory is estimated and candidates that cannot fit the device are dropped
before anything is compiled; the first candidate that fits is used.  ``all_configs`` enumerates
every configuration the launcher can pick, which is what the ahead-of-time compile check
(``fastattn kernels``) compiles for sm_80 and sm_90a.

Pure Python: importable without triton.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, List, Tuple

KERNELS = ("fwd", "bwd_dkdv", "bwd_dq")
HEAD_DIMS = (16, 32, 64, 128, 256)  # BLOCK_D: head_dim padded to a power of two
DTYPES = ("float32", "float16", "bfloat16")
MASK_KINDS = (0, 1, 2)  # none, keep (mask == 0 -> -1e10), additive
LENGTH_BUCKETS = ("short", "long")
SHORT_LENGTH = 64

# Shared memory per block (bytes) by compute capability major: opt-in maxima.
SMEM_LIMIT = {8: 163 * 1024, 9: 227 * 1024}
DEFAULT_SMEM_LIMIT = 99 * 1024
INTERPRETER_BLOCK_M = 16
INTERPRETER_BLOCK_N = 32
DROPOUT_MASK_BLOCK = 32  # the dropout_keep_mask kernel's tile (16 under the interpreter)


@dataclasses.dataclass(frozen=True)
class AttnConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def smem_bytes(self, kernel: str, block_d: int, elem_size: int) -> int:
        """Upper estimate of the shared memory the kernel's pipelined tiles need."""
        if kernel == "fwd":  # Q tile once, K and V tiles per stage
            tiles = self.block_m * block_d + 2 * self.num_stages * self.block_n * block_d
        elif kernel == "bwd_dkdv":  # K, V resident; Q and dO tiles per stage
            tiles = 2 * self.block_n * block_d + 2 * self.num_stages * self.block_m * block_d
        else:  # bwd_dq: Q, dO resident; K and V tiles per stage
            tiles = 2 * self.block_m * block_d + 2 * self.num_stages * self.block_n * block_d
        return tiles * elem_size + self.block_m * self.block_n * 4  # + one fp32 score tile


def block_d_for(head_dim: int) -> int:
    return max(16, 1 << (head_dim - 1).bit_length())


def length_bucket(length: int) -> str:
    return "short" if length <= SHORT_LENGTH else "long"


def _candidates(kernel: str, block_d: int, dtype: str, mask_kind: int, mask_layout: str,
                bucket: str, dropout: bool = False) -> List[AttnConfig]:
    """Candidates, best first; later ones use less shared memory, so the first that fits is the
    largest tile the device holds (128 x 128 forward tiles on sm_90's 227 KiB, as the wgmma
    forward wants; smaller ones on sm_80).  Chosen so that the sm_90a kernels compile without
    register spills for head_dim <= 128 (``fastattn kernels``)."""
    cands = _base_candidates(kernel, block_d, dtype, mask_kind, mask_layout, bucket)
    if dropout:  # Philox on a score tile costs registers: half the tile elements per thread
        if kernel == "fwd":
            cands = [dataclasses.replace(c, num_warps=8) if c.num_warps == 4 else
                     dataclasses.replace(c, block_n=max(16, c.block_n // 2)) for c in cands]
        elif kernel == "bwd_dkdv":
            cands = [dataclasses.replace(c, block_m=max(16, c.block_m // 2)) for c in cands]
            if dtype == "float32" and block_d >= 128:  # resident fp32 K, V, dK, dV tiles
                cands = [dataclasses.replace(c, block_n=16, num_warps=8) for c in cands]
        elif dtype == "float32":
            cands = [dataclasses.replace(c, block_m=max(16, c.block_m // 2),
                                         block_n=min(32, c.block_n)) for c in cands]
        else:
            cands = [dataclasses.replace(c, block_n=max(16, c.block_n // 2)) for c in cands]
    return cands


def _base_candidates(kernel: str, block_d: int, dtype: str, mask_kind: int, mask_layout: str,
                     bucket: str) -> List[AttnConfig]:
    full_mask = mask_kind != 0 and mask_layout in ("full", "narrow")
    wide = dtype == "float32"  # fp32 tiles take twice the shared memory and registers
    short = bucket == "short"
    if mask_kind != 0 and mask_layout == "narrow":
        # A full (L_q, L_k) mask of 1- or 2-byte elements cannot be pipelined through cp.async
        # (4 bytes minimum), so its tiles stay in registers: small tiles, 8 warps, no stages.
        if kernel == "fwd":
            if wide:
                return [AttnConfig(64 if block_d <= 64 else 32, 32, 8, 1)]
            return [AttnConfig(64, 64 if block_d <= 64 else 32, 8, 1)]
        if kernel == "bwd_dkdv":
            return [AttnConfig(32, 64 if block_d <= 64 and not wide else 32, 8, 1)]
        return [AttnConfig(64 if block_d <= 64 and not wide else 32, 32, 8, 1)]
    if kernel == "fwd":
        if wide:
            if block_d <= 32:
                cands = [AttnConfig(64 if short else 128, 32, 4 if short else 8, 2)]
            elif block_d == 64:
                cands = [AttnConfig(128, 32, 8, 2), AttnConfig(32, 32, 4, 1)]
            else:
                cands = [AttnConfig(32, 32, 8, 1), AttnConfig(32, 16, 4, 1)]
        elif block_d <= 64:
            if full_mask:
                cands = [AttnConfig(64, 64, 8, 3)]
            elif short:
                cands = [AttnConfig(64, 64, 4, 3)]
            else:  # 128 x 128 (two warpgroups of 64 rows) where shared memory allows: sm_90
                cands = [AttnConfig(128, 128, 8, 3), AttnConfig(128, 64, 8, 3)]
        elif block_d == 128:
            cands = [AttnConfig(128, 128, 8, 2)] if mask_kind == 0 and not short else []
            cands += [AttnConfig(128, 64, 8, 3), AttnConfig(64, 32, 4, 3)]
        else:
            cands = [AttnConfig(64, 64, 8, 2), AttnConfig(64, 32, 8, 1)]
    elif kernel == "bwd_dkdv":
        # Key-major tiles (see attention_tiles._dkdv_tiles): BLOCK_N (keys) is the M dimension
        # of every product, so BLOCK_N = 64 per warpgroup is what wgmma needs on sm_90.
        if block_d <= 64:
            cands = [AttnConfig(64, 64, 4, 3), AttnConfig(32, 64, 4, 2), AttnConfig(32, 32, 4, 2)]
        elif block_d == 128:  # 64 x 64 and 8 warps split the wgmma badly; 4 warps spill
            cands = [AttnConfig(32, 64, 4, 2), AttnConfig(32, 32, 4, 1)]
        else:
            cands = [AttnConfig(32, 32, 8, 1), AttnConfig(16, 32, 4, 1)]
        if wide:
            cands = [dataclasses.replace(c, block_n=max(16, c.block_n // 2)) for c in cands]
    else:  # bwd_dq
        if block_d <= 64:
            cands = [AttnConfig(64, 32, 4, 3), AttnConfig(64, 32, 4, 2)]
        elif block_d == 128:  # one warpgroup: 8 warps on 64 rows split the wgmma N-wise
            cands = [AttnConfig(64, 64, 4, 2), AttnConfig(64, 32, 4, 1)]
        else:
            cands = [AttnConfig(32, 32, 8, 1), AttnConfig(32, 16, 4, 1)]
        if wide:
            cands = [dataclasses.replace(c, block_m=max(16, c.block_m // 2)) for c in cands]
    if mask_kind != 0:  # a mask tile per stage too: one stage fewer
        cands = [dataclasses.replace(c, num_stages=max(1, c.num_stages - 1)) for c in cands]
    return cands


def tuned_key(kernel: str, head_dim: int, dtype: str, mask_kind: int, mask_layout: str,
              length: int, dropout: bool) -> str:
    """The case key of a launch in the tuned tables (:mod:`fastattn.tuning`), e.g.
    ``fwd|d64|float16|mask1-row|long|plain``: everything :func:`pick_config` decides on."""
    return (f"{kernel}|d{block_d_for(head_dim)}|{dtype}|mask{mask_kind}-{mask_layout}|"
            f"{length_bucket(length)}|{'dropout' if dropout else 'plain'}")


def pick_config(kernel: str, head_dim: int, dtype: str, mask_kind: int, length: int,
                smem_limit: int, interpreter: bool = False, mask_layout: str = "row",
                dropout: bool = False, device=None, family: str = "attention") -> AttnConfig:
    """The configuration the launcher uses.  ``length`` is L_q (fwd, dq) or L_k (dkdv).

    ``mask_layout``: "row" (one row per key block: key padding), "full" (a tile of 4- or 8-byte
    elements) or "narrow" (a tile of 1- or 2-byte elements: bool, uint8, float16...).
    ``dropout``: the kernels' DROPOUT variant.  ``device``: where a tuned table for that
    device (``family``'s entries, see :mod:`fastattn.tuning`) takes precedence over the
    static table.
    """
    if interpreter:  # small blocks: several blocks and a ragged tail at lengths like 70
        return AttnConfig(INTERPRETER_BLOCK_M, INTERPRETER_BLOCK_N, 4, 1)
    block_d = block_d_for(head_dim)
    elem = 4 if dtype == "float32" else 2
    if device is not None:
        from fastattn import tuning

        tuned = tuning.lookup(family, tuned_key(kernel, head_dim, dtype, mask_kind, mask_layout,
                                                length, dropout), device)
        cfg = _from_tuned(tuned)
        if cfg is not None and cfg.smem_bytes(kernel, block_d, elem) <= smem_limit:
            return cfg
    for cfg in _candidates(kernel, block_d, dtype, mask_kind, mask_layout, length_bucket(length),
                           dropout):
        if cfg.smem_bytes(kernel, block_d, elem) <= smem_limit:
            return cfg
    raise ValueError(f"no {kernel} configuration fits {smem_limit} bytes of shared memory "
                     f"for head_dim={head_dim}, dtype={dtype}")


def _from_tuned(tuned) -> "AttnConfig | None":
    """An AttnConfig from a tuned table's entry; None when absent or not of today's fields."""
    if not tuned:
        return None
    try:
        return AttnConfig(**tuned)
    except TypeError:
        return None


# Tile shapes ``fastattn tune`` times per kernel, beside the static table's choice.
TUNE_SHAPES = {
    "fwd": ((128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3),
            (128, 32, 4, 3), (64, 128, 4, 2), (128, 64, 8, 4)),
    "bwd_dkdv": ((64, 64, 4, 3), (64, 64, 4, 2), (32, 64, 4, 3), (128, 64, 4, 2),
                 (64, 128, 8, 2), (32, 128, 8, 2)),
    "bwd_dq": ((64, 32, 4, 3), (64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 8, 3),
               (64, 64, 8, 3), (32, 64, 4, 3)),
}


def tune_candidates(kernel: str, head_dim: int, dtype: str, mask_kind: int, length: int,
                    smem_limit: int, mask_layout: str = "row", dropout: bool = False,
                    family: str = "attention") -> List[AttnConfig]:
    """What ``fastattn tune`` times for one case: the static choice first, then the
    :data:`TUNE_SHAPES` that fit ``smem_limit`` (pruned before anything is compiled)."""
    block_d = block_d_for(head_dim)
    elem = 4 if dtype == "float32" else 2
    static = pick_config(kernel, head_dim, dtype, mask_kind, length, smem_limit,
                         mask_layout=mask_layout, dropout=dropout, family=family)
    out = [static]
    for shape in TUNE_SHAPES[kernel]:
        cfg = AttnConfig(*shape)
        if cfg not in out and cfg.smem_bytes(kernel, block_d, elem) <= smem_limit:
            out.append(cfg)
    return out


def smem_limit_for(capability_major: int) -> int:
    return SMEM_LIMIT.get(capability_major, DEFAULT_SMEM_LIMIT)


# (mask kind, mask layout) pairs the launcher distinguishes.
MASK_VARIANTS = ((0, "none"), (1, "row"), (1, "full"), (1, "narrow"),
                 (2, "row"), (2, "full"), (2, "narrow"))


def all_configs(capability_major: int,
                kernels: Tuple[str, ...] = KERNELS,
                head_dims: Tuple[int, ...] = HEAD_DIMS,
                dtypes: Tuple[str, ...] = DTYPES,
                ) -> Iterator[Tuple[str, int, str, int, str, bool, AttnConfig]]:
    """Every (kernel, BLOCK_D, dtype, mask kind, mask layout, dropout, config) the launcher can
    pick."""
    limit = smem_limit_for(capability_major)
    seen = set()
    for kernel, d, dt, (mk, layout), bucket, dropout in itertools.product(
            kernels, head_dims, dtypes, MASK_VARIANTS, LENGTH_BUCKETS, (False, True)):
        length = 1 if bucket == "short" else 4096
        cfg = pick_config(kernel, d, dt, mk, length, limit, mask_layout=layout, dropout=dropout)
        key = (kernel, d, dt, mk, layout, dropout, cfg)
        if key not in seen:
            seen.add(key)
            yield key


def _variants(kernel: str, dtype: str, mask_kind: int, layout: str, dropout: bool,
              block_d: int, capability_major: int):
    """The compile-time specializations compiled for one configuration: the general one
    (partial key tiles, not causal), plus causal for unmasked kernels without dropout.
    Key-padding keep masks compile with KEY_LENGTHS (which holds the mask-reading walk too);
    on sm_90, 2-byte types with head_dim <= 128 read through TMA in every kernel."""
    base = dict(MASK_KIND=mask_kind, MASK_ROW=layout == "row",
                KEY_LENGTHS=mask_kind == 1 and layout == "row", CAUSAL=False)
    if kernel != "bwd_dkdv":
        base["EVEN_N"] = False
    base["EVEN_D"] = True
    base["TMA"] = capability_major >= 9 and dtype != "float32" and block_d <= 128
    if kernel == "bwd_dq":
        base["MASK_GRAD"] = False
    yield base
    if mask_kind == 0 and not dropout:
        yield dict(base, CAUSAL=True)


def aot_specs(capability_major: int):
    """Ahead-of-time compile specs (see :mod:`fastattn.aot`) for every pickable configuration,
    arguments in the kernels' order."""
    ptr_types = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
    mask_types = {(1, "row"): "*u8", (1, "full"): "*i32", (1, "narrow"): "*u8",
                  (2, "row"): "*fp32", (2, "full"): "*fp32", (2, "narrow"): "*fp16"}
    names = {"fwd": "attention_fwd_kernel", "bwd_dkdv": "attention_bwd_dkdv_kernel",
             "bwd_dq": "attention_bwd_dq_kernel"}
    tensor_args = {
        "fwd": ["Q", "K", "V", "MASK", "LENS", "O", "LSE", "SEED"],
        "bwd_dkdv": ["Q", "K", "V", "MASK", "LENS", "DO", "LSE", "DELTA", "DK", "DV", "SEED"],
        "bwd_dq": ["Q", "K", "V", "MASK", "LENS", "DO", "LSE", "DELTA", "DQ", "DMASK", "SEED"],
    }
    n_strides = {"fwd": 16, "bwd_dkdv": 22, "bwd_dq": 19}
    for kernel, block_d, dtype, mask_kind, layout, dropout, cfg in all_configs(capability_major):
        for variant in _variants(kernel, dtype, mask_kind, layout, dropout, block_d,
                                 capability_major):
            sig = {}
            for name in tensor_args[kernel]:
                if name == "SEED":
                    sig[name] = "*i64"
                elif name in ("LSE", "DELTA", "DMASK"):
                    sig[name] = "*fp32"
                elif name == "LENS":
                    sig[name] = "*i32" if variant["KEY_LENGTHS"] else "*fp32"
                elif name == "MASK":
                    sig[name] = mask_types.get((mask_kind, layout), ptr_types[dtype])
                else:
                    sig[name] = ptr_types[dtype]
            for i in range(n_strides[kernel]):
                sig[f"s{i}"] = "i32"
            sig.update({"H": "i32", "kv_group": "i32", "L_q": "i32", "L_k": "i32", "D": "i32",
                        "causal_off": "i32", "qk_scale": "fp32"})
            if kernel != "fwd":
                sig["sm_scale"] = "fp32"
            sig["masked_raw" if kernel == "fwd" else "masked_score"] = "fp32"
            sig["dropout_p"] = "fp32"
            constexprs = dict(variant, PRECISION="tf32x3" if dtype == "float32" else "tf32",
                              DROPOUT=dropout, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                              BLOCK_D=block_d)
            for k in constexprs:
                sig[k] = "constexpr"
            mask_name = ("none", "keep", "add")[mask_kind] + (
                "" if mask_kind == 0 else f"-{layout}")
            flags = "".join(f" {f.lower()}" for f in ("CAUSAL", "KEY_LENGTHS", "TMA")
                            if variant.get(f))
            yield dict(
                kernel=f"attention_{kernel}",
                fn=f"fastattn.kernels.attention:{names[kernel]}",
                signature=sig, constexprs=constexprs,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                config=(f"D={block_d} {dtype} mask={mask_name}{' dropout' if dropout else ''}"
                        f"{flags} M{cfg.block_m} N{cfg.block_n} w{cfg.num_warps} "
                        f"s{cfg.num_stages}"),
                head_dim=block_d,
            )
    yield dict(
        kernel="attention_dropout_mask",
        fn="fastattn.kernels.attention:attention_dropout_mask_kernel",
        signature={"SEED": "*i64", "Z": "*u8", "L_q": "i32", "L_k": "i32", "dropout_p": "fp32",
                   "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"},
        constexprs=dict(BLOCK_M=DROPOUT_MASK_BLOCK, BLOCK_N=DROPOUT_MASK_BLOCK),
        num_warps=4, num_stages=1, config=f"M{DROPOUT_MASK_BLOCK} N{DROPOUT_MASK_BLOCK} w4 s1",
    )
