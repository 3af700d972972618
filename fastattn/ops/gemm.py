"""GEMMs with fused epilogues on CUDA / the interpreter: the Triton kernels, their cuBLAS(Lt)
equivalents, and the per-shape choice between them.

    matmul(a, b, epilogue, bias=, pre=, residual=)   Triton: the TMA kernel where the operands
        allow it (sm_90, fp16/bf16, 16-byte aligned bases and row strides, one unit stride per
        operand), else the pointer kernel.
    cublas_matmul(...)                                the same result through cuBLAS(Lt):
        ``addmm`` with its bias epilogue, ``_addmm_activation`` (relu; tanh-GELU on CUDA) with
        its fused bias + activation where the pre-activation need not be stored, then the
        elementwise ops cuBLAS cannot fuse (erf GELU, storing the pre-activation, activation
        gradient, residual).
    gemm(..., choose=True)                            the faster of the two for this shape,
        per :func:`choose_backend`: the tuned table's entry (``fastattn tune`` times both),
        else cuBLAS(Lt); ``choose=False`` always runs Triton (``backend="triton"``).

Epilogues are the keys of ``kernels.matmul_configs.EPILOGUES``; semantics in kernels/matmul.py.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from fastattn.backends import interpreter_enabled
from fastattn.kernels.matmul_configs import (ACTIVATIONS, EPILOGUES, LAYOUTS, MatmulConfig,
                                             case_key, pick_config)
from fastattn.ops.launch import _DTYPE_NAMES, _precision, _smem_limit
from fastattn.ops.launch import (cdiv, device_capability, ensure_tma_allocator, launch_on,
                                 target_device)

_ACT_NAMES = {v: k for k, v in ACTIVATIONS.items()}
_HALF = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_programs(device: torch.device) -> int:
    """Persistent programs: one per SM (the compile target's in the static report)."""
    target = target_device()
    if target is not None:
        return target.sm_count
    if device.type != "cuda":
        return 4  # the interpreter: a few persistent programs, each walking several tiles
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def tma_unavailable_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when the TMA kernel can run for ``dtype`` on ``device`` (operands aside)."""
    if dtype not in _HALF:
        return f"the TMA kernel takes float16 / bfloat16, got {dtype}"
    capability = device_capability(device)
    if capability is not None:
        if capability[0] != 9:
            return (f"the TMA kernel is built for sm_90 (Hopper), this GPU is "
                    f"sm_{capability[0]}{capability[1]}")
        return None
    if device.type == "cpu" and interpreter_enabled():
        return None
    return f"no Triton kernels on {device.type}"


def _row_major(t: torch.Tensor) -> Optional[int]:
    """The row stride of a 2-D tensor TMA can address as stored (last dim contiguous,
    16-byte aligned base and row stride), else None."""
    elem = t.element_size()
    if t.stride(1) != 1 and t.shape[1] != 1:
        return None
    row = t.stride(0) if t.shape[0] > 1 else max(t.shape[1], 1)
    if row < t.shape[1] or (row * elem) % 16 or t.data_ptr() % 16:
        return None
    return row


def _operand(t: torch.Tensor) -> Optional[Tuple[bool, int]]:
    """(transposed, row stride) to read 2-D ``t`` through TMA, or None."""
    row = _row_major(t)
    if row is not None:
        return False, row
    row = _row_major(t.t())
    return None if row is None else (True, row)


def tma_operands(a, b, c, pre, residual):
    """(A_T, B_T, stride_a, stride_b, stride_c, stride_p, stride_r) or None when some tensor
    is not TMA-addressable (the pointer kernel runs then)."""
    oa, ob = _operand(a), _operand(b)
    rows = [_row_major(t) if t is not None else 0 for t in (c, pre, residual)]
    if oa is None or ob is None or any(r is None for r in rows):
        return None
    return (oa[0], ob[0], oa[1], ob[1], *rows)


def matmul(a: torch.Tensor, b: torch.Tensor, epilogue: str = "plain", *,
           bias: Optional[torch.Tensor] = None, pre: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None, out_dtype: Optional[torch.dtype] = None,
           config: Optional[MatmulConfig] = None, kernel: Optional[str] = None
           ) -> torch.Tensor:
    """C = epilogue(a @ b) on the Triton kernels, for a (M, K), b (K, N) of any strides.

    ``kernel``: "tma", "pointer" or None (TMA where it can run, see the module docstring);
    ``config``: a launch configuration (default: the static table's)."""
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty(m, n, dtype=out_dtype or a.dtype, device=a.device)
    if c.numel() == 0:
        return c
    flags = EPILOGUES[epilogue]
    tma = None
    if kernel in (None, "tma") and (config is None or config.kernel == "tma"):
        reason = tma_unavailable_reason(a.device, a.dtype) or (
            "an empty K dimension" if k == 0 else None)
        tma = None if reason else tma_operands(a, b, c, pre, residual)
        if kernel == "tma" and tma is None:
            raise ValueError(f"the TMA kernel cannot read these operands: "
                             f"{reason or 'a base or row stride is not 16-byte aligned'}")
    dtype = _DTYPE_NAMES[a.dtype]
    if config is None or (config.kernel == "tma") != (tma is not None):
        config = pick_config(m, dtype, _smem_limit(a.device), interpreter=interpreter_enabled(),
                             tma=tma is not None)
    if tma is not None:
        _launch_tma(a, b, c, bias, pre, residual, flags, config, tma)
    else:
        _launch_pointer(a, b, c, bias, pre, residual, flags, config)
    return c


def _launch_tma(a, b, c, bias, pre, residual, flags, cfg, tma):
    from fastattn.kernels.matmul_tma import matmul_tma_kernel

    has_bias, act, store_pre, act_grad, has_res = flags
    m, k = a.shape
    n = b.shape[1]
    a_t, b_t, s_a, s_b, s_c, s_p, s_r = tma
    tiles = cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n)
    programs = min(tiles, _num_programs(a.device))
    with launch_on(a.device):
        ensure_tma_allocator()
        matmul_tma_kernel[(programs,)](
            a, b, c, bias if bias is not None else c, pre if pre is not None else c,
            residual if residual is not None else c, m, n, k,
            s_a, s_b, s_c, s_p or s_c, s_r or s_c, programs,
            HAS_BIAS=has_bias, ACTIVATION=act, STORE_PRE=store_pre, ACT_GRAD=act_grad,
            HAS_RESIDUAL=has_res, A_T=a_t, B_T=b_t,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _launch_pointer(a, b, c, bias, pre, residual, flags, cfg):
    from fastattn.kernels.matmul import matmul_epilogue_kernel

    has_bias, act, store_pre, act_grad, has_res = flags
    m, k = a.shape
    n = b.shape[1]
    pre_t = pre if pre is not None else c
    res_t = residual if residual is not None else c
    grid = (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n),)
    with launch_on(a.device):
        matmul_epilogue_kernel[grid](
            a, b, c, bias if bias is not None else c, pre_t, res_t,
            m, n, k, *a.stride(), *b.stride(), *c.stride(), *pre_t.stride(), *res_t.stride(),
            HAS_BIAS=has_bias, ACTIVATION=act, STORE_PRE=store_pre, ACT_GRAD=act_grad,
            HAS_RESIDUAL=has_res, PRECISION=_precision(a.dtype),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _activation_grad(dy, h, act: str):
    if act == "relu":
        return torch.ops.aten.threshold_backward(dy, h, 0)
    return torch.ops.aten.gelu_backward(dy, h, approximate="tanh" if act == "gelu_tanh"
                                        else "none")


def cublas_matmul(a: torch.Tensor, b: torch.Tensor, epilogue: str = "plain", *,
                  bias: Optional[torch.Tensor] = None, pre: Optional[torch.Tensor] = None,
                  residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What :func:`matmul` computes, through cuBLAS(Lt) and torch's elementwise kernels."""
    has_bias, act, store_pre, act_grad, has_res = EPILOGUES[epilogue]
    if act and not store_pre and (act == 1 or (act == 3 and a.is_cuda)):
        # cuBLASLt's fused bias + relu / bias + GELU (tanh form on CUDA) epilogue
        return torch._addmm_activation(bias, a, b, use_gelu=act == 3)
    if store_pre:
        h = torch.addmm(bias, a, b, out=pre)
    else:
        h = torch.addmm(bias, a, b) if has_bias else torch.mm(a, b)
    if act:
        name = _ACT_NAMES[act]
        return F.relu(h) if name == "relu" else F.gelu(
            h, approximate="tanh" if name == "gelu_tanh" else "none")
    if act_grad:
        return _activation_grad(h, pre, _ACT_NAMES[act_grad])
    if has_res:
        h += residual
    return h


def layout_of(a: torch.Tensor, b: torch.Tensor) -> str:
    """The case key's layout letters of (a, b): "t" where a tensor is stored transposed."""
    ta = a.stride(1) != 1 and a.stride(0) == 1
    tb = b.stride(1) != 1 and b.stride(0) == 1
    return {v: k for k, v in LAYOUTS.items()}[(ta, tb)]


def gemm_case(a: torch.Tensor, b: torch.Tensor, epilogue: str) -> str:
    return case_key(epilogue, _DTYPE_NAMES[a.dtype], layout_of(a, b), a.shape[0], a.shape[1],
                    b.shape[1])


def choose_backend(device: torch.device, case: str) -> Tuple[str, Optional[MatmulConfig], str]:
    """("triton" | "cublas", Triton config or None, why) for one GEMM case on ``device``."""
    from fastattn import tuning

    if device.type != "cuda":
        return "triton", None, "not a CUDA device: the Triton kernels (interpreter)"
    tuned = tuning.lookup("matmul", case, device)
    if tuned is None:
        return "cublas", None, "no tuned entry for this shape on this GPU: cuBLAS(Lt)"
    if tuned.get("backend") == "cublas":
        return "cublas", None, "tuned table: cuBLAS(Lt) measured faster"
    cfg = MatmulConfig.from_dict(tuned)
    return "triton", cfg, f"tuned table: Triton {cfg.kernel} kernel measured faster"


def gemm(a: torch.Tensor, b: torch.Tensor, epilogue: str = "plain", *, choose: bool,
         bias: Optional[torch.Tensor] = None, pre: Optional[torch.Tensor] = None,
         residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``matmul`` or ``cublas_matmul``: with ``choose``, the one :func:`choose_backend` picks."""
    config = None
    if choose and a.is_cuda:
        backend, config, _ = choose_backend(a.device, gemm_case(a, b, epilogue))
        if backend == "cublas":
            return cublas_matmul(a, b, epilogue, bias=bias, pre=pre, residual=residual)
    return matmul(a, b, epilogue, bias=bias, pre=pre, residual=residual, config=config)
