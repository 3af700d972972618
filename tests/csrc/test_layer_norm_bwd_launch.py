"""The CUDA LayerNorm backward fits every GPU's shared memory: its dweight / dbias partials go
to shared memory only when 2 * cols * 4 bytes (plus the kernel's static shared memory) fit the
device's opt-in limit, else to global memory.  Checked without a GPU: the launch-configuration
function runs on the host (g++), and both kernel variants compile for sm_86 and sm_120 (99 KiB
opt-in), where 16384 columns (128 KiB) need the global variant."""
import re
import shutil
import subprocess

import pytest

from fastattn import csrc_build

ROOT = csrc_build.csrc_root()
NVCC = csrc_build.find_nvcc()
CUDA_INCLUDE = csrc_build.cuda_include_dir(NVCC)
# cudaDevAttrMaxSharedMemoryPerBlockOptin (bytes) of each architecture.
OPTIN = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024,
         "sm_120": 99 * 1024}
HOST_PROGRAM = """\
#include <cstdio>
#include "layer_norm/layer_norm.h"
int main(int argc, char** argv) {
  int cols, optin;
  while (std::scanf("%d %d", &cols, &optin) == 2) {
    const fastattn::LayerNormBwdLaunch c = fastattn::layer_norm_bwd_launch(cols, optin);
    std::printf("%d %d\\n", c.smem_partials ? 1 : 0, c.dynamic_smem);
  }
  return 0;
}
"""


def static_smem():
    text = (ROOT / "layer_norm" / "layer_norm.h").read_text()
    m = re.search(r"constexpr int kLayerNormBwdStaticSmem = (\d+) \* (\d+);", text)
    return int(m.group(1)) * int(m.group(2))


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """layer_norm_bwd_launch(cols, optin) -> (smem_partials, dynamic_smem), run on the host."""
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None or CUDA_INCLUDE is None:
        pytest.skip("needs a host C++ compiler and the CUDA toolkit headers")
    tmp = tmp_path_factory.mktemp("ln_launch")
    (tmp / "main.cpp").write_text(HOST_PROGRAM)
    subprocess.run([cxx, "-std=c++17", f"-I{ROOT}", f"-I{CUDA_INCLUDE}", "main.cpp", "-o", "main"],
                   cwd=tmp, check=True)

    def run(pairs):
        text = "".join(f"{c} {o}\n" for c, o in pairs)
        out = subprocess.run([str(tmp / "main")], input=text, capture_output=True, text=True,
                             check=True).stdout.split()
        return [(bool(int(a)), int(b)) for a, b in zip(out[::2], out[1::2])]

    return run


def test_partials_use_shared_memory_only_where_it_fits(launch):
    cases = [(cols, arch) for cols in (1, 768, 1023, 4096, 6144, 12000, 12640, 12641, 16384)
             for arch in OPTIN]
    got = launch([(cols, OPTIN[arch]) for cols, arch in cases])
    for (cols, arch), (smem, dynamic) in zip(cases, got):
        fits = 8 * cols + static_smem() <= OPTIN[arch]
        assert (smem, dynamic) == ((True, 8 * cols) if fits else (False, 0)), (cols, arch)
    by_case = dict(zip(cases, got))
    assert by_case[(16384, "sm_86")] == (False, 0)  # 128 KiB > 99 KiB: the global variant
    assert by_case[(16384, "sm_120")] == (False, 0)
    assert by_case[(16384, "sm_90")] == (True, 16384 * 8)
    assert by_case[(12640, "sm_89")] == (True, 12640 * 8)  # exactly 99 KiB with the static part
    assert by_case[(12641, "sm_89")] == (False, 0)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_both_variants_compile_for_99_kib_architectures_without_spills():
    rows = csrc_build.compile_source(ROOT / "layer_norm" / "layer_norm_bwd.cu",
                                     ["sm_86", "sm_120"], loop_metrics=False)
    bwd = [r for r in rows if r.kernel == "layer_norm_bwd_kernel"]
    variants = {(r.arch, r.config) for r in bwd}
    for arch in ("sm_86", "sm_120"):
        for dtype, vec in (("fp32", 4), ("fp16", 8), ("bf16", 8)):
            for v in (1, vec):
                for smem in ("true", "false"):
                    assert (arch, f"{dtype}, {v}, {smem}") in variants
    assert not [r for r in rows if r.spill_stores or r.spill_loads]
    # The launch configuration's static shared memory is the kernel's.
    assert {r.shared_bytes for r in bwd} == {static_smem()}
