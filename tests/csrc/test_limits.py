"""The CUDA kernels' limits are defined once, in C++: Python reads them from the extension
(fastattn.cuda_limits) and falls back to a copy only when it is not built; the copy, the
extension's name -> constant table and the registrations are checked against the C++ source
(no compiler or GPU needed)."""
import re
from pathlib import Path

import pytest
import torch

from fastattn import csrc_build, cuda_limits

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def cpp_constant(header, name):
    m = re.search(rf"constexpr\s+int\s+{name}\s*=\s*(\d+)\s*;", (CSRC / header).read_text())
    assert m, f"{name} not found in {header}"
    return int(m.group(1))


@pytest.fixture
def no_extension(monkeypatch):
    monkeypatch.setattr(cuda_limits, "_extension_ops", lambda: None)
    cuda_limits._read_limit.cache_clear()
    yield
    cuda_limits._read_limit.cache_clear()


def test_fallback_matches_the_cpp_constants():
    assert cuda_limits.FALLBACK == {
        "attention_max_head_dim": cpp_constant("attention/attention_params.h",
                                               "kAttentionMaxHeadDim"),
        "layer_norm_bwd_max_cols": cpp_constant("layer_norm/layer_norm.h",
                                                "kLayerNormBwdMaxCols"),
    }


def test_extension_maps_every_name_to_its_constant():
    source = (CSRC / "bindings.cpp").read_text()
    body = source[source.index("int64_t cuda_limit("):]
    body = body[:body.index("\n}\n")]
    table = dict(re.findall(r'name == "(\w+)"\) return (k\w+);', body))
    assert table == {"attention_max_head_dim": "kAttentionMaxHeadDim",
                     "layer_norm_bwd_max_cols": "kLayerNormBwdMaxCols"}


def test_limit_comes_from_the_extension_when_built(monkeypatch, no_extension):
    class Ops:
        @staticmethod
        def cuda_limit(name):
            return {"attention_max_head_dim": 64, "layer_norm_bwd_max_cols": 8192}[name]

    monkeypatch.setattr(cuda_limits, "_extension_ops", lambda: Ops)
    assert cuda_limits.cuda_limit("attention_max_head_dim") == 64
    from fastattn.ops import attention_cuda

    q = torch.empty(1, 1, 1, 128, dtype=torch.float16)
    assert not attention_cuda.runs_cuda_kernel(q)  # head_dim 128 > the extension's 64
    assert attention_cuda.runs_cuda_kernel(q[..., :64])


def test_fallback_without_the_extension(no_extension):
    assert cuda_limits.cuda_limit("attention_max_head_dim") == 128
    assert cuda_limits.cuda_limit("layer_norm_bwd_max_cols") == 16384
    with pytest.raises(ValueError, match="name must be one of"):
        cuda_limits.cuda_limit("max_seq_len")


def test_built_extension_agrees_with_the_source():
    pytest.importorskip("fastattn._C")
    for name, value in cuda_limits.FALLBACK.items():
        assert torch.ops.fastattn.cuda_limit(name) == value


def _registrations(source, block):
    m = re.search(rf"{block}\s*\{{(.*?)\n\}}", source, re.S)
    assert m, block
    return m.group(1)


def test_every_entry_point_is_an_op_with_cuda_and_meta_kernels():
    source = (CSRC / "bindings.cpp").read_text()
    defs = _registrations(source, r"TORCH_LIBRARY_FRAGMENT\(fastattn, m\)")
    schemas = re.findall(r'm\.def\("(\w+)\(([^)]*)\)', defs)
    tensor_ops = {name for name, args in schemas if "Tensor" in args}
    assert {name for name, _ in schemas} == tensor_ops | {"cuda_limit"}
    for key in ("CUDA", "Meta"):
        block = _registrations(source, rf"TORCH_LIBRARY_IMPL\(fastattn, {key}, m\)")
        impls = set(re.findall(r'm\.impl\("(\w+)"', block))
        assert impls == tensor_ops, f"{key}: {sorted(tensor_ops ^ impls)}"
    module = _registrations(source, r"PYBIND11_MODULE\(TORCH_EXTENSION_NAME, m\)")
    assert not re.search(r"m\.(def|attr)\(", module), "a pybind11 entry point bypasses the ops"


def test_loop_geometry_matches_the_attention_forward():
    header = "attention/attention_fwd.cuh"
    threads = cpp_constant(header, "kWarps") * 32
    assert csrc_build.LOOP_GEOMETRY["attention_fwd_kernel"] == (
        threads, cpp_constant(header, "kBlockM"), cpp_constant(header, "kBlockN"))
