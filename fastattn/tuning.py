"""Tuned launch tables: measured configurations per GPU, consulted before the static tables.

``fastattn tune`` times the candidate configurations of each kernel family on the GPU it runs
on and writes ``tuned/<gpu-slug>.json``; a table committed to ``fastattn/kernels/tuned/`` ships
with the package and is used on every device whose name gives the same slug.  Layout::

    {"device": "NVIDIA H200", "slug": "nvidia-h200", "triton": "3.6.0", "torch": "2.11.0",
     "entries": {"<family>": {"<case key>": {"config": {...}, "ms": 0.123,
                                             "static_ms": 0.150, "candidates": [...]}}}}

A family (``attention``, ``varlen``, ``layer_norm``, ``matmul``) defines its own case keys and
config fields; :func:`lookup` returns the ``config`` dict or None, and the launcher falls back
to its static table.  :func:`override` forces a configuration for one case (how ``fastattn
tune`` times candidates through the public ops).  Nothing here touches CUDA at import time.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from typing import Dict, Iterator, Optional

TUNED_DIR = os.path.join(os.path.dirname(__file__), "kernels", "tuned")
_overrides: Dict[tuple, dict] = {}


def device_slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200': the file name of a device's tuned table."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@functools.lru_cache(maxsize=None)
def _load(slug: str) -> Optional[dict]:
    path = os.path.join(TUNED_DIR, f"{slug}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _device_name(device) -> Optional[str]:
    import torch

    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    return _cuda_name(torch.device(device).index)


@functools.lru_cache(maxsize=None)
def _cuda_name(index: Optional[int]) -> str:
    import torch

    return torch.cuda.get_device_name(index if index is not None else torch.cuda.current_device())


def table_for(device) -> Optional[dict]:
    """The tuned table shipped for ``device`` (a CUDA device), or None."""
    name = _device_name(device)
    return _load(device_slug(name)) if name else None


def table_path_for(device) -> Optional[str]:
    """Where ``device``'s tuned table is (or would be) shipped; None off CUDA."""
    name = _device_name(device)
    return os.path.join(TUNED_DIR, f"{device_slug(name)}.json") if name else None


def lookup(family: str, key: str, device) -> Optional[dict]:
    """The tuned configuration of ``family``/``key`` on ``device``: a forced one first (see
    :func:`override`), then the shipped table's; None means 'use the static table'."""
    forced = _overrides.get((family, key))
    if forced is not None:
        return forced
    if ("*", "static") in _overrides:
        return None
    table = table_for(device)
    if not table:
        return None
    entry = table.get("entries", {}).get(family, {}).get(key)
    return None if entry is None else entry.get("config")


@contextlib.contextmanager
def override(family: str, key: str, config: Optional[dict]) -> Iterator[None]:
    """Force ``config`` for one case inside the block (``None``: force the static table)."""
    slot = (family, key) if config is not None else ("*", "static")
    old = _overrides.get(slot)
    _overrides[slot] = config if config is not None else {}
    try:
        yield
    finally:
        if old is None:
            _overrides.pop(slot, None)
        else:
            _overrides[slot] = old
