"""Build script.

The pure-Python package (reference modules, Triton kernels, CLI) installs everywhere.
The CUDA C++ extension in ``csrc/`` is built only when a CUDA toolkit and a CUDA build of
torch are present (or ``FASTATTN_BUILD_CUDA=1`` forces it); it never decides by
``torch.cuda.is_available()`` and never downloads anything.  With no ``csrc/*.cu``
sources, or no toolkit, the install is the pure-Python one.
"""
import glob
import importlib.util
import os

from setuptools import setup


def _cuda_archs():
    """fastattn/cuda_archs.py, loaded by path (importing fastattn needs its dependencies)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastattn", "cuda_archs.py")
    spec = importlib.util.spec_from_file_location("_fastattn_cuda_archs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nvcc_flags():
    """nvcc flags of the extension: sm_80 and sm_90a SASS plus portable compute_90 PTX unless
    TORCH_CUDA_ARCH_LIST is set (fastattn/cuda_archs.py)."""
    return ["-O3", "--use_fast_math", "-lineinfo", *_cuda_archs().extension_arch_flags()]


def _cuda_extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    sources += sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    force = os.environ.get("FASTATTN_BUILD_CUDA", "").lower()
    if force in ("0", "false", "no") or not sources:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception:  # torch not importable in the build environment
        return [], {}
    if force not in ("1", "true", "yes") and (CUDA_HOME is None or torch.version.cuda is None):
        return [], {}
    ext = CUDAExtension(
        name="fastattn._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc_flags()},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
