"""The kernels address tensors of more than 2^31 elements with 64-bit offsets, read from the IR.

One subprocess (``TRITON_INTERPRET`` unset) runs the real launchers on small CPU tensors laid
out like real inputs, compiles each captured launch to TTGIR for its GPU target (no ptxas, no
GPU; :mod:`fastattn.address_width`) and lists, per kernel, the run-time products that feed a
pointer add (``tt.addptr``).  A 32-bit one is an ``offs * stride`` that wraps past 2^31
elements.  Kernels: the packed (varlen) forward and backward with the delta preprocess, the
padded attention forward and backward with a full (N, H, L_q, L_k) mask, the dropout-mask
kernel, the four LayerNorm kernels and the reduction, and both GEMM kernels.  A control
kernel with an int32 ``row * stride`` must be reported, so the check can fail.  ~15 s of CPU.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import triton
    import triton.language as tl
    from fastattn.address_width import narrow_products, ttgir
    from fastattn.launch_capture import capture_sources
    from fastattn.ops.attention import attention_backward, attention_forward, dropout_keep_mask
    from fastattn.ops.gemm import matmul
    from fastattn.ops.layer_norm import layer_norm_backward, layer_norm_forward
    from fastattn.ops.varlen import varlen_backward, varlen_forward


    @triton.jit
    def narrow_control_kernel(X, Y, stride, BLOCK: tl.constexpr):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(Y + rows * stride, tl.load(X + rows * stride))


    def control():
        x = torch.empty(64, 3)
        narrow_control_kernel[(2,)](x, x, x.stride(0), BLOCK=32)


    f16 = torch.float16
    heads, d, seed = 3, 64, torch.zeros(1, dtype=torch.int64)
    # packed (total, H, D) views of a fused QKV projection, as the encoder makes them
    qkv = torch.randn(37, 3, heads, d, dtype=f16)
    q, k, v = qkv.unbind(1)
    o = torch.randn(37, heads, d, dtype=f16)
    cu = torch.tensor([0, 20, 37], dtype=torch.int32)
    lse = torch.randn(heads, 37)
    # padded (N, H, L, D) with a full float mask (N, H, L_q, L_k)
    n, L = 2, 40
    pq = torch.randn(n, L, heads, d, dtype=f16).transpose(1, 2)
    mask = torch.randn(n, heads, L, L)
    plse = torch.randn(n, heads, L)
    x, xl = torch.randn(5000, 256, dtype=f16), torch.randn(40, 20000, dtype=f16)
    w, wl = torch.randn(256, dtype=f16), torch.randn(20000, dtype=f16)
    stat, statl = torch.randn(5000), torch.randn(40)
    a, b = torch.randn(300, 768, dtype=f16), torch.randn(3072, 768, dtype=f16).t()
    CASES = [
        ("control", "sm_90a", control),
        ("varlen_forward", "sm_80", lambda: varlen_forward(
            q, k, v, cu, cu, 20, 20, True, 0.125, 0.1, seed)),
        ("varlen_backward", "sm_90a", lambda: varlen_backward(
            o, q, k, v, o, lse, cu, cu, 20, 20, True, 0.125, 0.1, seed)),
        ("full_mask_forward", "sm_80", lambda: attention_forward(
            pq, pq, pq, mask, 2, False, 0.125, 0.1, seed)),
        ("full_mask_backward", "sm_90a", lambda: attention_backward(
            pq, pq, pq, pq, pq, plse, mask, 2, False, 0.125, 0.1, seed)),
        ("dropout_mask", "sm_90a", lambda: dropout_keep_mask(seed, (n, heads, L, L), 0.1)),
        ("layer_norm_forward", "sm_90a", lambda: layer_norm_forward(x, x, w, w, 1e-5, True)),
        ("layer_norm_forward_looped", "sm_90a", lambda: layer_norm_forward(
            xl, xl, wl, wl, 1e-5, True)),
        ("layer_norm_backward", "sm_90a", lambda: layer_norm_backward(
            x, x, w, stat, stat, True, True)),
        ("layer_norm_backward_looped", "sm_90a", lambda: layer_norm_backward(
            xl, xl, wl, statl, statl, True, True)),
        ("matmul_pointer", "sm_80", lambda: matmul(a, b, "bias_gelu", bias=w.new_zeros(3072),
                                                   pre=a.new_empty(300, 3072))),
        ("matmul_tma", "sm_90a", lambda: matmul(a, b, "bias_gelu", bias=w.new_zeros(3072),
                                               pre=a.new_empty(300, 3072))),
    ]
    rows = []
    for case, arch, run in CASES:
        for _, source in capture_sources(run, arch):
            report = narrow_products(ttgir(source), source.name)
            rows.append(dict(case=case, kernel=source.name, arch=arch, addptrs=report.addptrs,
                             wide=len(report.wide),
                             narrow=[f"{p.where}: {p.text}" for p in report.narrow]))
    json.dump(rows, sys.stdout)
''')


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    pytest.importorskip("triton")
    script = tmp_path_factory.mktemp("address_width") / "address_width_check.py"
    script.write_text(SCRIPT)  # a file: Triton reads a kernel's source from it
    out = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True,
                         text=True, timeout=900, cwd=os.getcwd())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout)


EXPECTED = {
    "varlen_forward": {"varlen_attention_fwd_kernel"},
    "varlen_backward": {"attention_bwd_preprocess_kernel", "varlen_attention_bwd_dkdv_kernel",
                        "varlen_attention_bwd_dq_kernel"},
    "full_mask_forward": {"attention_fwd_kernel"},
    "full_mask_backward": {"attention_bwd_preprocess_kernel", "attention_bwd_dkdv_kernel",
                           "attention_bwd_dq_kernel"},
    "dropout_mask": {"attention_dropout_mask_kernel"},
    "layer_norm_forward": {"layer_norm_fwd_kernel"},
    "layer_norm_forward_looped": {"layer_norm_fwd_looped_kernel"},
    "layer_norm_backward": {"layer_norm_bwd_kernel", "layer_norm_reduce_kernel"},
    "layer_norm_backward_looped": {"layer_norm_bwd_looped_kernel", "layer_norm_reduce_kernel"},
    "matmul_pointer": {"matmul_epilogue_kernel"},
    "matmul_tma": {"matmul_tma_kernel"},
}


def test_check_reports_a_32_bit_row_times_stride(rows):
    control = [r for r in rows if r["case"] == "control"]
    assert len(control) == 1 and len(control[0]["narrow"]) == 1, control
    assert "arith.muli" in control[0]["narrow"][0] and "i32" in control[0]["narrow"][0]


def test_every_case_compiles_the_kernels_it_launches(rows):
    for case, kernels in EXPECTED.items():
        assert {r["kernel"] for r in rows if r["case"] == case} == kernels, case


def test_addresses_are_computed_in_64_bits(rows):
    """No 32-bit product of run-time values feeds a pointer; the row offsets are 64-bit
    products (the walk found them: the check is not vacuous)."""
    narrow = [f"{r['case']}/{r['kernel']}: {p}" for r in rows if r["case"] != "control"
              for p in r["narrow"]]
    assert not narrow, "\n".join(narrow)
    for r in rows:
        if r["case"] not in ("control", "matmul_tma"):  # TMA: descriptors, no row products
            assert r["addptrs"] > 0 and r["wide"] > 0, r
