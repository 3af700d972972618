"""Data-parallel training of the fused classifier: DDP and FSDP2 over gloo, two CPU ranks.

Each rank is a fresh Python process started with ``TRITON_INTERPRET=1`` in its environment (so
``backend="triton"`` runs the fused kernels in the interpreter on CPU tensors, whatever the
machine running pytest has) and ``CUDA_VISIBLE_DEVICES=""``.  The ranks meet through a
``file://`` store in the test's temporary folder.  A module fixture starts, per backend, five
processes at once: the single-process run over the full global batch, two DDP ranks and two
FSDP2 ranks (each rank trains on one half of every global batch); every process writes its
final parameters, losses, gradient-stride checks and Python warnings to a file.

Equal halves and a per-rank mean loss make DDP's (and FSDP2's) gradient average the gradient
of the global mean loss, so after the same SGD steps from the same state dict the parameters
agree with the single-process run up to fp32 rounding: each gradient is a sum over tokens that
the ranks split in two (two half-sums added by the all-reduce instead of one GEMM / reduction
over all tokens), which changes the order of fp32 additions by a few ulps of the summands, not
the result.  SGD is linear in the gradient, so that difference stays at rounding level after
three steps; see PARAM_RTOL.  (Adam's first step divides g by |g| and would turn a sign flip of
a near-zero gradient into a full learning-rate step, so it is not used for this comparison.)

The workers are this module run as ``python -m tests.distributed.test_data_parallel SPEC``.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastattn.modules import (BertEncoderLayer, BertForSequenceClassification, FeedForward,
                              LayerNorm, SelfAttention)
from fastattn.ops.attention import attention_bwd_op, attention_fwd_op
from fastattn.ops.feedforward import feedforward, feedforward_bwd_op, feedforward_fwd_op
from fastattn.ops.layer_norm import layer_norm, layer_norm_bwd_op, layer_norm_fwd_op
from fastattn.ops.varlen import unpad_input, varlen_attention_bwd_op, varlen_attention_fwd_op
from tests.helpers import DEVICE

REPO = Path(__file__).resolve().parents[2]
VOCAB, CLASSES, PAD = 30, 3, 0
CONFIG = dict(embed_size=32, num_layers=2, heads=2, forward_expansion=2, max_length=17,
              dropout=0.0, pooling="mean")
WORLD, GLOBAL_BATCH, LENGTH, STEPS = 2, 4, 13, 3
LR, MOMENTUM = 0.2, 0.9
# max |p - p_single| <= PARAM_RTOL * max(max |p_single|, PARAM_FLOOR) per parameter tensor: some
# ulps of fp32 (eps 1.2e-7) for the reordered gradient sums; measured worst 2.1e-7 (triton) and
# 4.7e-7 (torch).  The floor (the init std) covers biases that stay near 0 (a key bias gets no
# gradient at all: the softmax ignores it, so it holds rounding noise of order 1e-14).
PARAM_RTOL, PARAM_FLOOR = 2e-6, 0.02
LOSS_ATOL = 1e-6  # the mean of the ranks' mean losses against the global mean loss
JOB_TIMEOUT_S = 300  # every process of a fixture, together
COLLECTIVE_TIMEOUT_S = 120  # a rank whose peer died fails instead of waiting forever

GRAD_STRIDE_WARNING = "Grad strides do not match bucket view strides"
VIEW_OUTPUT_WARNING = "returned a view tensor"

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available")


def _model(backend: str) -> BertForSequenceClassification:
    return BertForSequenceClassification(VOCAB, CLASSES, pad_id=PAD, backend=backend, **CONFIG)


def _global_batches():
    """STEPS padded global batches (ids (4, 13), attention_mask, labels), right padding."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for step in range(STEPS):
        ids = torch.randint(1, VOCAB, (GLOBAL_BATCH, LENGTH), generator=g)
        lengths = torch.randint(1, LENGTH + 1, (GLOBAL_BATCH,), generator=g)
        lengths[step % GLOBAL_BATCH] = LENGTH
        keep = torch.arange(LENGTH)[None, :] < lengths[:, None]
        labels = torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)
        batches.append((ids.where(keep, PAD), keep.long(), labels))
    return batches


# ------------------------------------------------------------------------------ the workers

def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank's own shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _grad_stride_mismatches(model, step: int) -> list:
    bad = []
    for name, p in model.named_parameters():
        if p.grad is None:
            bad.append((step, name, "no gradient"))
        elif _local(p.grad).stride() != _local(p).stride():
            bad.append((step, name, _local(p.grad).stride(), _local(p).stride()))
    return bad


def _ddp_warning_control() -> list:
    """Provoke DDP's stride warning on purpose (a gradient laid out transposed before backward,
    which accumulation keeps): shows that the warnings of the reducer reach this process."""
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3, bias=False)
    ddp = DistributedDataParallel(lin)
    lin.weight.grad = torch.zeros(4, 3).t()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddp(torch.randn(2, 4)).sum().backward()
    return [str(w.message) for w in caught]


def _train(spec: dict) -> dict:
    import torch.distributed as dist

    mode, rank, world = spec["mode"], spec["rank"], spec["world"]
    if mode != "single":
        dist.init_process_group("gloo", init_method=spec["init_method"], rank=rank,
                                world_size=world,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    model = _model(spec["backend"])
    model.load_state_dict(torch.load(spec["init"]))
    forward = model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model)
    elif mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.encoder.layers:  # the padding-free encoder calls layer(...) too
            fully_shard(layer, mesh=mesh)
        fully_shard(model.encoder, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    per = GLOBAL_BATCH // world
    losses, stride_mismatches = [], []
    for step, (ids, mask, labels) in enumerate(_global_batches()):
        rows = slice(rank * per, (rank + 1) * per)
        loss = F.cross_entropy(forward(ids[rows], mask[rows]), labels[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        stride_mismatches += _grad_stride_mismatches(model, step)
        opt.step()
        losses.append(loss.item())
    params = {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
              for name, p in model.named_parameters()}
    result = dict(losses=losses, params=params, stride_mismatches=stride_mismatches)
    if mode == "ddp":
        result["control_warnings"] = _ddp_warning_control()
    if mode != "single":
        dist.destroy_process_group()
    return result


def _worker_main(spec: dict) -> None:
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(spec)
    result["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    torch.save(result, spec["out"])


# ------------------------------------------------------------------------------ the launcher

def _launch(tmp: Path, jobs: dict, timeout: float = JOB_TIMEOUT_S) -> dict:
    """Run every job (name -> spec) as its own process, all at once.

    Returns name -> result dict, or name -> the failure text (why, and the end of the process's
    output) for a job that failed.  When a job fails, the still running jobs of its process
    group are killed (they would wait for it); at the deadline every job still running is.
    """
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    specs = {name: dict(spec, out=str(tmp / f"{name}.pt")) for name, spec in jobs.items()}
    logs = {name: tmp / f"{name}.log" for name in specs}
    procs = {}
    for name, spec in specs.items():
        with open(logs[name], "wb") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "tests.distributed.test_data_parallel", json.dumps(spec)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    failed = {}

    def kill(name: str, why: str) -> None:
        if procs[name].poll() is None:
            procs[name].kill()
            failed[name] = why

    try:
        while any(p.poll() is None for p in procs.values()):
            for name, p in procs.items():
                if p.poll() not in (None, 0) and name not in failed:
                    failed[name] = f"exit status {p.returncode}"
                    for other in procs:
                        if specs[other]["group"] == specs[name]["group"]:
                            kill(other, f"killed after {name} failed")
            if time.monotonic() > deadline:
                for name in procs:
                    kill(name, f"still running after {timeout:.0f} s: killed")
            time.sleep(0.2)
    finally:  # interrupted: leave no process behind
        for name in procs:
            kill(name, "killed: the test was interrupted")
    results = {}
    for name, p in procs.items():
        p.wait()
        if p.returncode != 0 and name not in failed:
            failed[name] = f"exit status {p.returncode}"
        if name in failed:
            tail = logs[name].read_text(errors="replace")[-6000:]
            results[name] = f"{name}: {failed[name]}; its output ends with:\n{tail}"
        else:
            results[name] = torch.load(specs[name]["out"])
    return results


@pytest.fixture(scope="module", params=["triton", "torch"])
def runs(request, tmp_path_factory):
    """backend -> the results of the single-process, DDP and FSDP2 runs (see the docstring)."""
    backend = request.param
    tmp = tmp_path_factory.mktemp(f"data_parallel_{backend}")
    torch.manual_seed(0)
    init = _model(backend).state_dict()
    torch.save(init, tmp / "init.pt")
    base = dict(backend=backend, init=str(tmp / "init.pt"))
    jobs = {"single": dict(base, mode="single", group="single", rank=0, world=1)}
    for mode in ("ddp", "fsdp2"):
        for rank in range(WORLD):
            jobs[f"{mode}{rank}"] = dict(base, mode=mode, group=mode, rank=rank, world=WORLD,
                                         init_method=(tmp / f"{mode}.store").as_uri())
    results = _launch(tmp, jobs)
    results["init"] = init
    return results


def _result(runs, name: str) -> dict:
    result = runs[name]
    if isinstance(result, str):
        pytest.fail(result, pytrace=False)
    return result


def _ranks(runs, mode: str) -> list:
    return [_result(runs, f"{mode}{rank}") for rank in range(WORLD)]


# ------------------------------------------------------------------------------ the tests

def _check_matches_single_process(runs, mode: str) -> None:
    single, ranks = _result(runs, "single"), _ranks(runs, mode)
    for rank, result in enumerate(ranks[1:], 1):  # every rank applied the same averaged update
        for name, p in result["params"].items():
            assert torch.equal(p, ranks[0]["params"][name]), f"rank {rank} differs at {name}"
    losses = torch.tensor([r["losses"] for r in ranks]).mean(0)
    torch.testing.assert_close(losses, torch.tensor(single["losses"]), rtol=0, atol=LOSS_ATOL)
    assert single["losses"][-1] < single["losses"][0]
    assert list(ranks[0]["params"]) == list(single["params"])
    moved = 0.0
    for name, ref in single["params"].items():
        p, init = ranks[0]["params"][name], runs["init"][name]
        tol = PARAM_RTOL * max(ref.abs().max().item(), PARAM_FLOOR)
        diff = (p - ref).abs().max().item()
        assert diff <= tol, (f"{mode} {name}: max |p - p_single| = {diff:.3e} > {tol:.3e}; "
                             f"the training moved it by up to {(ref - init).abs().max():.3e}")
        moved = max(moved, (ref - init).abs().max().item() / max(ref.abs().max(), PARAM_FLOOR))
    assert moved > 1e4 * PARAM_RTOL, f"the parameters hardly changed (by {moved:.1e} of scale)"


@needs_gloo
def test_ddp_matches_single_process(runs):
    _check_matches_single_process(runs, "ddp")


@needs_gloo
def test_fsdp2_matches_single_process(runs):
    _check_matches_single_process(runs, "fsdp2")


@needs_gloo
def test_every_parameter_gradient_has_the_parameter_strides(runs):
    for name in ("single", "ddp0", "ddp1", "fsdp20", "fsdp21"):
        assert _result(runs, name)["stride_mismatches"] == [], name


@needs_gloo
def test_ddp_sees_no_gradient_stride_warning(runs):
    for rank, result in enumerate(_ranks(runs, "ddp")):
        assert not [w for w in result["warnings"] if GRAD_STRIDE_WARNING in w], (
            rank, result["warnings"])
        # the control: a mismatch made on purpose is reported to this process
        assert any(GRAD_STRIDE_WARNING in w for w in result["control_warnings"]), (
            rank, result["control_warnings"])


@needs_gloo
def test_fsdp2_sees_no_view_outputs(runs):
    """FSDP2 warns when a wrapped module returns a view (an in-place op on it would skip the
    pre-backward all-gather): the encoder layers must return fresh tensors."""
    for rank, result in enumerate(_ranks(runs, "fsdp2")):
        assert not [w for w in result["warnings"] if VIEW_OUTPUT_WARNING in w], (
            rank, result["warnings"])


# ------------------------------------------- single process: fresh outputs, gradient strides

def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0:
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    return (sa.data_ptr() < sb.data_ptr() + sb.nbytes()
            and sb.data_ptr() < sa.data_ptr() + sa.nbytes())


def _assert_fresh(op: str, outputs, inputs) -> None:
    inputs = [t for t in inputs if isinstance(t, torch.Tensor)]
    for i, out in enumerate(outputs):
        for j, t in enumerate(inputs):
            assert not _shares_memory(out, t), f"{op}: output {i} shares memory with input {j}"
        for j, other in enumerate(outputs[:i]):
            assert not _shares_memory(out, other), f"{op}: outputs {j} and {i} share memory"


def test_custom_op_outputs_are_fresh_tensors():
    """No fastattn op returns an alias of an input or of another output (custom ops may not)."""
    n, h, l, d, e = 2, 2, 5, 16, 32
    qkv = torch.randn(n, l, 3, h, d, device=DEVICE)  # Q, K, V as strided views of one tensor
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    mask = torch.rand(n, l, device=DEVICE) > 0.3
    args = (q, k, v, mask, 1, False, d ** -0.5)
    out, lse = attention_fwd_op(*args)
    _assert_fresh("attention_fwd", [out, lse], args)
    dout = torch.randn_like(out)
    bwd = (dout, q, k, v, out, lse, mask, 1, False, d ** -0.5)
    _assert_fresh("attention_bwd", attention_bwd_op(*bwd), bwd)

    packed, _, cu, max_len = unpad_input(qkv.flatten(-3), mask)
    pq, pk, pv = packed.unflatten(-1, (3, h, d)).unbind(1)
    args = (pq, pk, pv, cu, cu, max_len, max_len, False, d ** -0.5)
    out, lse = varlen_attention_fwd_op(*args)
    _assert_fresh("varlen_attention_fwd", [out, lse], args)
    bwd = (torch.randn_like(out), pq, pk, pv, out, lse, cu, cu, max_len, max_len, False,
           d ** -0.5)
    _assert_fresh("varlen_attention_bwd", varlen_attention_bwd_op(*bwd), bwd)

    x, res = torch.randn(7, e, device=DEVICE), torch.randn(7, e, device=DEVICE)
    w, b = torch.randn(e, device=DEVICE), torch.randn(e, device=DEVICE)
    for store_sum in (False, True):
        args = (x, res, w, b, 1e-5, store_sum)
        y, mean, rstd, xsum = layer_norm_fwd_op(*args)
        _assert_fresh("layer_norm_fwd", [y, mean, rstd, xsum], args)
    bwd = (torch.randn_like(y), x, w, mean, rstd, True, True)
    ln_grads = layer_norm_bwd_op(*bwd)
    _assert_fresh("layer_norm_bwd", ln_grads, bwd)
    # weight gradients come out in the weights' layout, so autograd keeps them without a copy
    assert [g.stride() for g in ln_grads[1:]] == [w.stride(), b.stride()]

    w1, b1 = torch.randn(2 * e, e, device=DEVICE), torch.randn(2 * e, device=DEVICE)
    w2, b2 = torch.randn(e, 2 * e, device=DEVICE), torch.randn(e, device=DEVICE)
    for residual in (None, res):
        args = (x, w1, b1, w2, b2, residual, 1)
        y, hid, act = feedforward_fwd_op(*args)
        _assert_fresh("feedforward_fwd", [y, hid, act], args)
    bwd = (torch.randn_like(y), x, w1, w2, hid, act, 1)
    grads = feedforward_bwd_op(*bwd)
    _assert_fresh("feedforward_bwd", grads, bwd)
    assert [g.stride() for g in grads[1:]] == [t.stride() for t in (w1, b1, w2, b2)]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_module_outputs_are_fresh_tensors(packed):
    """Outputs of the fused modules share no memory with their inputs, in the padded (N, L, E)
    and the packed (T, E) layouts; those of LayerNorm, FeedForward and the encoder layer (what
    FSDP2 wraps) and of the encoder are not views either (``_base is None``).  SelfAttention and the classifier end
    in nn.Linear, which itself returns a view of its GEMM output for 3-D inputs."""
    e = 32
    kw = dict(backend="triton", device=DEVICE)
    x = torch.randn(2, 5, e, device=DEVICE, requires_grad=True)
    inputs = x[0] if packed else x
    cu = torch.tensor([0, 2, 5], dtype=torch.int32, device=DEVICE)
    layer = BertEncoderLayer(e, 2, 2, **kw)
    outs = {"LayerNorm": LayerNorm(e, **kw)(inputs, residual=inputs * 2),
            "FeedForward": FeedForward(e, 2, **kw)(inputs, residual=inputs * 2),
            "SelfAttention": (SelfAttention(e, 2, **kw).forward_packed(inputs, cu, 3) if packed
                              else SelfAttention(e, 2, **kw)(inputs, inputs, inputs)),
            "BertEncoderLayer": (layer.forward_packed(inputs, cu, 3) if packed
                                 else layer(inputs, inputs, inputs))}
    if not packed:
        model = _model("triton").to(DEVICE)
        ids, mask, _ = _global_batches()[0]
        outs["BertForSequenceClassification"] = model(ids.to(DEVICE), mask.to(DEVICE))
        outs["BertEncoder"] = model.encoder(ids.to(DEVICE), mask.to(DEVICE) != 0)  # unpadded
    for name, out in outs.items():
        if name in ("LayerNorm", "FeedForward", "BertEncoderLayer", "BertEncoder"):
            assert out._base is None, f"{name} returned a view"
        assert not _shares_memory(out, x), f"{name}'s output shares memory with its input"
        assert out.requires_grad


def test_transposed_parameters_get_gradients_in_their_layout():
    """Parameters stored transposed (dense, not contiguous) get .grad with their own strides,
    which DDP's bucket views expect."""
    e, hidden = 16, 32
    x = torch.randn(2, 5, e, device=DEVICE)
    w1 = torch.nn.Parameter(torch.randn(e, hidden, device=DEVICE).t())  # (hidden, e), (1, hidden)
    w2 = torch.nn.Parameter(torch.randn(hidden, e, device=DEVICE).t())
    b1 = torch.nn.Parameter(torch.randn(hidden, device=DEVICE))
    b2 = torch.nn.Parameter(torch.randn(e, device=DEVICE))
    gamma = torch.nn.Parameter(torch.randn(e, device=DEVICE))
    y = feedforward(x, w1, b1, w2, b2, "gelu", x, backend="triton")
    layer_norm(y, (e,), gamma, b2, backend="triton").square().sum().backward()
    for name, p in dict(w1=w1, b1=b1, w2=w2, b2=b2, gamma=gamma).items():
        assert p.grad.stride() == p.stride(), (name, p.grad.stride(), p.stride())
    assert not w1.is_contiguous() and not w2.is_contiguous()


if __name__ == "__main__":
    _worker_main(json.loads(sys.argv[1]))
