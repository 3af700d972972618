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


# Makes triton look not installed (find_spec -> None, as on a machine without it) for every
# importer, torch included (torch >= 2.14 probes triton with importlib.util.find_spec while it
# imports), and records which module asked.
HIDE_TRITON = """\
import sys

class HideTriton:
    def __init__(self, finder, asked):
        self.finder, self.asked = finder, asked

    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(
                    ("importlib", "_frozen_importlib")):
                frame = frame.f_back
            self.asked.append(frame.f_globals.get("__name__", "?") if frame else "?")
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()

asked = []
sys.meta_path[:] = [HideTriton(finder, asked) for finder in sys.meta_path]
"""


def test_import_touches_no_cuda_and_needs_no_triton():
    """`import fastattn` on a machine without triton: works, asks for no triton module (torch's
    own import may probe for it), initialises no CUDA, and the torch backend runs."""
    code = HIDE_TRITON + (
        "import torch\n"
        "torch_asked = list(asked)\n"
        "import fastattn\n"
        "fastattn_asked = asked[len(torch_asked):]\n"
        "assert not fastattn_asked, f'import fastattn looked for triton from {fastattn_asked}'\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
        "x = torch.randn(1, 2, 5, 16)\n"
        "print(fastattn.attention(x, x, x).shape)\n"
        "print(fastattn.backends.triton_unavailable_reason(torch.device('cuda')))\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([1, 2, 5, 16])" in out.stdout
    assert "triton is not installed" in out.stdout


def test_hidden_triton_catches_an_import_of_triton():
    """The harness above can fail: a module importing triton is caught and named."""
    code = HIDE_TRITON + (
        "try:\n"
        "    import triton.language\n"
        "except ModuleNotFoundError:\n"
        "    print('not found', sorted(set(asked)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "not found ['__main__']" in out.stdout
