"""Per-kernel regression timings with pytest-benchmark (not part of the test suite).

    pytest bench/ --benchmark-json=bench/out/kernels.json      # then compare runs with
    pytest-benchmark compare bench/out/*.json

CUDA: BERT-base sizes in bf16, every call synchronized.  CPU: small fp32 sizes (the PyTorch
path fastattn's "auto" backend takes there).  Each benchmark records the backend that ran and
the work per call (FLOPs or bytes) in ``extra_info``, so TFLOP/s or GB/s follow from the mean.
Kernels not in this build are skipped with the reason.
"""
import pytest
import torch

pytest.importorskip("pytest_benchmark")

import fastattn  # noqa: E402
from fastattn.benchmark import flops, providers, workloads  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
TOKENS = 16384 if CUDA else 512
LENGTHS = (128, 512, 2048) if CUDA else (64, 256)
MASKS = ("none", "key-padding", "causal")


def _synced(fn):
    if not CUDA:
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


def _bench(benchmark, fn, work, unit, backend):
    fn = _synced(fn)
    fn()  # compile / warm up outside the measurement
    benchmark.extra_info.update(work=work, unit=unit, backend=backend, device=str(DEVICE),
                                dtype=str(DTYPE))
    benchmark.pedantic(fn, rounds=20 if CUDA else 5, warmup_rounds=2, iterations=1)


def _module(attr, module):
    try:
        return providers.fastattn_module(attr, module)
    except providers.NotApplicable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("mode", workloads.MODES)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("length", LENGTHS, ids=lambda n: f"L{n}")
def test_attention(benchmark, length, mask_kind, mode):
    batch, heads, d = max(1, TOKENS // length), 12, 64
    grad = mode != "fwd"
    q, k, v = (torch.randn(batch, heads, length, d, device=DEVICE, dtype=DTYPE,
                           requires_grad=grad) for _ in range(3))
    lengths = workloads.padded_lengths(batch, length) if mask_kind == "key-padding" else None
    mask = None if lengths is None else (
        torch.arange(length, device=DEVICE)[None] < torch.tensor(lengths, device=DEVICE)[:, None])
    causal = mask_kind == "causal"
    fwd = lambda: fastattn.attention(q, k, v, mask, causal=causal)
    fn = providers.timed_fn(fwd, mode, (q, k, v), torch.randn_like(q) if grad else None)
    work = flops.attention_flops(batch, heads, length, length, d, causal=causal, mode=mode,
                                 lengths=lengths)
    _bench(benchmark, fn, work, "flop", providers.fastattn_backend(DEVICE))


@pytest.mark.parametrize("mode", workloads.MODES)
@pytest.mark.parametrize("hidden", (768, 4096))
def test_layer_norm(benchmark, hidden, mode):
    cls = _module("LayerNorm", "layer_norm")
    rows = 16384 if CUDA else 1024
    mod = cls(hidden).to(DEVICE, DTYPE)
    x = torch.randn(rows, hidden, device=DEVICE, dtype=DTYPE, requires_grad=mode != "fwd")
    fn = providers.timed_fn(lambda: mod(x), mode, (x, *mod.parameters()),
                            torch.randn_like(x) if mode != "fwd" else None)
    work = flops.layernorm_bytes(rows, hidden, x.element_size(), mode=mode)
    _bench(benchmark, fn, work, "byte", providers.fastattn_backend(DEVICE))


@pytest.mark.parametrize("mode", workloads.MODES)
def test_feedforward(benchmark, mode):
    cls = _module("FeedForward", "feedforward")
    tokens = 16384 if CUDA else 256
    mod = cls(768, 4, activation="relu").to(DEVICE, DTYPE)
    x = torch.randn(tokens, 768, device=DEVICE, dtype=DTYPE, requires_grad=mode != "fwd")
    fn = providers.timed_fn(lambda: mod(x), mode, (x, *mod.parameters()),
                            torch.randn_like(x) if mode != "fwd" else None)
    work = flops.feedforward_flops(tokens, 768, 3072, mode=mode)
    _bench(benchmark, fn, work, "flop", providers.fastattn_backend(DEVICE))
