"""Integrations of fastattn's kernels with other libraries.

* :mod:`fastattn.integrations.transformers` — Hugging Face transformers: the ``"fastattn"``
  attention implementation and :func:`fastattn.optimize` for BERT models.  Importing it needs
  ``transformers``; ``import fastattn`` alone never imports transformers (see
  :mod:`fastattn.integrations._import_hook` for how the ``"fastattn"`` name is registered).
"""
