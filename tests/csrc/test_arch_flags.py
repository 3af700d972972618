"""The extension's default targets: sm_80 and sm_90a SASS plus portable (not arch-specific)
compute_90 PTX, so that GPUs after Hopper JIT the PTX; TORCH_CUDA_ARCH_LIST still wins."""
import subprocess

import pytest

from fastattn import cuda_archs, csrc_build, sass

KERNEL = "__global__ void scale(float* x, float a) { x[threadIdx.x] *= a; }\n"


def test_default_flags_give_two_sass_images_and_portable_ptx():
    flags = cuda_archs.extension_arch_flags({})
    assert flags == ["-gencode=arch=compute_80,code=sm_80",
                     "-gencode=arch=compute_90a,code=sm_90a",
                     "-gencode=arch=compute_90,code=compute_90"]
    ptx = [f for f in flags if "code=compute_" in f]
    assert ptx and not any(f.endswith("a") for f in ptx), "the only PTX must not be arch-specific"


def test_torch_arch_list_in_the_environment_wins():
    assert cuda_archs.extension_arch_flags({"TORCH_CUDA_ARCH_LIST": "8.6"}) == []
    assert cuda_archs.extension_arch_flags({"TORCH_CUDA_ARCH_LIST": " "}) != []


def test_setup_py_passes_the_flags_and_sets_no_arch_list():
    source = (csrc_build.csrc_root().parent / "setup.py").read_text()
    assert "extension_arch_flags()" in source
    assert 'environ.setdefault("TORCH_CUDA_ARCH_LIST"' not in source


def test_torch_adds_no_arch_flags_of_its_own():
    cpp_extension = pytest.importorskip("torch.utils.cpp_extension")
    get = getattr(cpp_extension, "_get_cuda_arch_flags", None)
    if get is None:
        pytest.skip("this torch has no _get_cuda_arch_flags")
    assert get(["-O3", *cuda_archs.extension_arch_flags({})]) == []


@pytest.mark.skipif(csrc_build.find_nvcc() is None, reason="nvcc not found")
def test_nvcc_object_holds_sm80_sm90a_cubins_and_compute90_ptx(tmp_path):
    cuobjdump = sass.tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (Triton bundles it)")
    (tmp_path / "k.cu").write_text(KERNEL)
    subprocess.run([csrc_build.find_nvcc(), "-c", "k.cu", "-o", "k.o",
                    *cuda_archs.extension_arch_flags({})], cwd=tmp_path, check=True)
    elf = subprocess.run([cuobjdump, "--list-elf", "k.o"], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    ptx = subprocess.run([cuobjdump, "--list-ptx", "k.o"], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert sorted(line.rsplit(".", 2)[-2] for line in elf.splitlines() if ".cubin" in line) == [
        "sm_80", "sm_90a"], elf
    assert [line.rsplit(".", 2)[-2] for line in ptx.splitlines() if ".ptx" in line] == [
        "sm_90"], ptx
