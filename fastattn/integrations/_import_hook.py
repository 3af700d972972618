"""Register ``attn_implementation="fastattn"`` with transformers without importing it eagerly.

``import fastattn`` should make ``BertModel.from_pretrained(..., attn_implementation="fastattn")``
work whatever the import order, but importing transformers' model code costs seconds, so
``import fastattn`` must not do it.  :func:`install` therefore:

* registers at once when ``transformers.modeling_utils`` (where ``AttentionInterface`` lives) is
  already imported;
* otherwise, when transformers is installed, puts a one-shot finder on ``sys.meta_path`` that
  wraps the loader of ``transformers.modeling_utils`` and registers right after that module has
  executed — before any model class can use it — and then removes itself;
* does nothing when transformers is not installed (one ``find_spec`` lookup, no import).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
import warnings

TARGET = "transformers.modeling_utils"
_lock = threading.Lock()


def _register() -> None:
    try:
        from fastattn.integrations.transformers import register

        register()
    except Exception as exc:  # never break the user's import of transformers
        warnings.warn(f"fastattn could not register its transformers attention: {exc!r}",
                      RuntimeWarning, stacklevel=2)


class _RegisteringLoader(importlib.abc.Loader):
    """Delegates to the real loader; registers once the target module has executed."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # get_source, get_resource_reader, ... of the real loader
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register()


class _Finder(importlib.abc.MetaPathFinder):
    """Intercepts the import of ``transformers.modeling_utils`` once."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        uninstall()  # one shot: the lookup below and later imports go to the other finders
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


_finder = _Finder()


def uninstall() -> None:
    with _lock:
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)


def install() -> None:
    """Arrange for the ``"fastattn"`` attention implementation to be registered (see above)."""
    if TARGET in sys.modules:
        _register()
        return
    try:
        installed = importlib.util.find_spec("transformers") is not None
    except (ImportError, ValueError):  # a broken or half-imported transformers package
        installed = False
    if not installed:
        return
    with _lock:
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
