"""The integer codes shared by the Python launchers, the Triton kernels and the C++ extension.

This module is the single source of truth; ``csrc/common/enums.h`` mirrors it value for value
(``tests/test_enums.py`` parses the header and checks that both agree).  The codes travel as
plain ints (op arguments, ``tl.constexpr`` switches, C++ template arguments), so an
``IntEnum`` member can be passed wherever an int is expected.

MaskKind: how an attention op reads its ``mask`` argument.
    NONE     no mask
    KEEP     keep mask: ``mask == 0`` -> score -1e10 (a fully masked row averages all values)
    ADD      additive float mask, added to the scaled scores
    EXCLUDE  torch's bool ``attn_mask`` (``scaled_dot_product_attention``): ``mask == 0`` ->
             score -inf (a fully masked row gives NaN, as torch)

Activation: the feed-forward's activation, by name ("relu", "gelu" = erf GELU, "gelu_tanh").
    NONE is the "no activation" code of the GEMM epilogue; the names map to the other members.
"""
from __future__ import annotations

import enum
from typing import Dict

__all__ = ["MaskKind", "Activation", "ACTIVATION_NAMES", "activation_code"]


class MaskKind(enum.IntEnum):
    NONE = 0
    KEEP = 1
    ADD = 2
    EXCLUDE = 3


class Activation(enum.IntEnum):
    NONE = 0
    RELU = 1
    GELU = 2  # erf form, torch's F.gelu default
    GELU_TANH = 3  # tanh approximation, F.gelu(approximate="tanh")


# The public activation names -> their code; the order is the one error messages list.
ACTIVATION_NAMES: Dict[str, Activation] = {
    "relu": Activation.RELU,
    "gelu": Activation.GELU,
    "gelu_tanh": Activation.GELU_TANH,
}


def activation_code(name: str) -> Activation:
    """The Activation of a public name; ValueError naming ``activation`` otherwise."""
    try:
        return ACTIVATION_NAMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation must be one of {tuple(ACTIVATION_NAMES)}, got "
                         f"{name!r}") from None
