"""The attention forward's compiled (mask path, mask dtype) variants: the Python list
(csrc_build.ATTENTION_FWD_VARIANTS), the C++ list (attention_fwd_variants.h, read by the
dispatcher), the translation units and what each instantiates agree; the enum orders that
csrc_build uses to name kernels match the C++ enums.  No compiler needed."""
import re

import pytest

from fastattn import csrc_build

ROOT = csrc_build.csrc_root()
pytestmark = pytest.mark.skipif(ROOT is None, reason="no csrc/ (installed without sources)")

FWD_MASK_NAMES = {"kNone": "none", "kKeyPadding": "key_padding", "kKeep": "keep", "kAdd": "add"}
MASK_DTYPE_NAMES = {"kUInt8": "uint8", "kInt8": "int8", "kInt16": "int16", "kInt32": "int32",
                    "kInt64": "int64", "kFloat16": "float16", "kBFloat16": "bfloat16",
                    "kFloat32": "float32", "kFloat64": "float64"}


def _as_python(mask, dtype):
    mask = FWD_MASK_NAMES[mask]
    return mask, None if mask == "none" else MASK_DTYPE_NAMES[dtype]


def _enum(path, name):
    body = re.search(rf"enum class {name} : int \{{(.*?)\}};", path.read_text(), re.S).group(1)
    return [(m, int(v)) for m, v in re.findall(r"(k\w+) = (\d+)", body)]


def test_enum_orders_match_the_names_csrc_build_prints():
    fwd = _enum(ROOT / "attention" / "attention_params.h", "FwdMask")
    assert [FWD_MASK_NAMES[m] for m, _ in fwd] == list(csrc_build.FWD_MASKS)
    assert [v for _, v in fwd] == list(range(len(fwd)))
    dtypes = _enum(ROOT / "common" / "dtypes.h", "MaskDType")
    assert [MASK_DTYPE_NAMES[m] for m, _ in dtypes] == list(csrc_build.MASK_DTYPES)
    assert [v for _, v in dtypes] == list(range(len(dtypes)))


def test_header_list_matches_python_list():
    header = (ROOT / "attention" / "attention_fwd_variants.h").read_text()
    listed = [_as_python(m, d) for m, d in re.findall(r"X\((k\w+), (k\w+)\)", header)]
    assert listed == list(csrc_build.ATTENTION_FWD_VARIANTS)
    assert len(set(listed)) == len(listed)


def test_one_translation_unit_per_variant_instantiating_it():
    files = sorted((ROOT / "attention" / "fwd").glob("*.cu"))
    expected = {csrc_build.attention_fwd_source(*v) for v in csrc_build.ATTENTION_FWD_VARIANTS}
    assert {str(f.relative_to(ROOT.parent)) for f in files} == expected
    for f in files:
        calls = re.findall(r"^FASTATTN_INSTANTIATE_ATTENTION_FWD\((k\w+), (k\w+)\)",
                           f.read_text(), re.M)
        assert len(calls) == 1, f"{f.name}: {calls}"
        assert csrc_build.attention_fwd_source(*_as_python(*calls[0])) == str(
            f.relative_to(ROOT.parent))


def test_dispatcher_reads_the_variant_list():
    src = (ROOT / "attention" / "attention_dispatch.cpp").read_text()
    assert '#include "attention/attention_fwd_variants.h"' in src
    assert "FASTATTN_ATTENTION_FWD_VARIANTS(" in src
    # no hand-written pair next to the list: every run_attention_fwd names a template argument
    assert not re.search(r"run_attention_fwd<[^>]*FwdMask::k", src)
