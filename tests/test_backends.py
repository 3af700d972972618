"""Backend selection, the process default and the context manager."""
import os
import subprocess
import sys

import pytest
import torch

import fastattn
from fastattn import backends


def test_auto_resolves_to_torch_on_cpu():
    assert backends.resolve_backend("auto", torch.device("cpu")) == "torch"


def test_use_backend_restores_the_previous_default():
    before = fastattn.get_default_backend()
    with fastattn.use_backend("torch"):
        assert fastattn.get_default_backend() == "torch"
        with pytest.raises(ValueError, match="backend must be one of"):
            with fastattn.use_backend("nope"):
                pass
        assert fastattn.get_default_backend() == "torch"
    assert fastattn.get_default_backend() == before


def test_environment_variable_sets_the_default():
    env = dict(os.environ, FASTATTN_BACKEND="torch")
    out = subprocess.run([sys.executable, "-c", "import fastattn; print(fastattn.get_default_backend())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch"
    env["FASTATTN_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", "import fastattn"], env=env, capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "backend must be one of" in bad.stderr


def test_import_touches_no_cuda_and_needs_no_triton():
    """`import fastattn` with triton made unimportable: works, and initialises no CUDA."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, fastattn\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
        "x = torch.randn(1, 2, 5, 16)\n"
        "print(fastattn.attention(x, x, x).shape)\n"
        "print(fastattn.backends.triton_unavailable_reason(torch.device('cuda')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([1, 2, 5, 16])" in out.stdout
    assert "triton is not installed" in out.stdout
