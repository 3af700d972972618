"""fastattn/enums.py is the one source of the shared integer codes: the C++ headers mirror it
value for value (parsed here, no compiler needed), and the modules that still spell the codes
as constants agree with it."""
import re
from pathlib import Path

import pytest

from fastattn import csrc_build, enums

CSRC = Path(__file__).resolve().parent.parent / "csrc"
ENUM = re.compile(r"enum\s+class\s+(\w+)\s*:\s*int\s*\{(.*?)\};", re.S)
MEMBER = re.compile(r"(k\w+)\s*=\s*(-?\d+)")


def cpp_enums(*headers):
    """{enum name: {member name: value}} of every ``enum class X : int`` in the headers; every
    member must carry an explicit value (so that the mirror cannot drift by reordering)."""
    found = {}
    for header in headers:
        text = re.sub(r"//[^\n]*", "", (CSRC / header).read_text())
        for name, body in ENUM.findall(text):
            members = [m.strip() for m in body.split(",") if m.strip()]
            parsed = dict((k, int(v)) for k, v in (MEMBER.fullmatch(m).groups() for m in members))
            assert len(parsed) == len(members), f"{header}: {name} has a member without a value"
            found[name] = parsed
    return found


def python_name(cpp_member):
    """kGeluTanh -> GELU_TANH, kReLU -> RELU, kGeluErf -> GELU (erf is the plain GELU)."""
    special = {"kReLU": "RELU", "kGeluErf": "GELU"}
    if cpp_member in special:
        return special[cpp_member]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cpp_member[1:]).upper()


@pytest.mark.parametrize("enum", [enums.MaskKind, enums.Activation], ids=lambda e: e.__name__)
def test_cpp_header_mirrors_the_python_enum(enum):
    cpp = cpp_enums("common/enums.h")[enum.__name__]
    assert {python_name(k): v for k, v in cpp.items()} == {m.name: m.value for m in enum}


def test_no_other_header_defines_the_shared_enums():
    for header in CSRC.rglob("*.h"):
        if header.name == "enums.h":
            continue
        defined = set(cpp_enums(header.relative_to(CSRC)))
        assert not defined & {"MaskKind", "Activation"}, f"{header} redefines {defined}"


def test_the_parser_reads_a_header_it_did_not_write():
    # A guard on the test itself: the parser sees every member, and values, not positions.
    assert cpp_enums("common/dtypes.h")["DType"] == {"kFloat16": 0, "kBFloat16": 1, "kFloat32": 2}


def test_forward_variant_tables_follow_the_cpp_enums():
    cpp = cpp_enums("attention/attention_params.h", "common/dtypes.h")
    fwd = sorted(cpp["FwdMask"].items(), key=lambda kv: kv[1])
    assert [python_name(k).lower() for k, _ in fwd] == list(csrc_build.FWD_MASKS)
    assert [v for _, v in fwd] == list(range(len(fwd)))
    dtypes = sorted(cpp["MaskDType"].items(), key=lambda kv: kv[1])
    assert [python_name(k).lower().replace("_", "") for k, _ in dtypes] == list(
        csrc_build.MASK_DTYPES)


def test_activation_names():
    assert enums.activation_code("gelu_tanh") is enums.Activation.GELU_TANH
    with pytest.raises(ValueError, match=r"activation must be one of \('relu', 'gelu', "
                                         r"'gelu_tanh'\), got 'swish'"):
        enums.activation_code("swish")
    assert csrc_build._ENUMS["Activation"] == {"1": "relu", "2": "gelu", "3": "gelu_tanh"}


def test_constants_spelled_elsewhere_agree():
    from fastattn import functional
    from fastattn.kernels import matmul_configs

    assert (functional.MASK_NONE, functional.MASK_KEEP, functional.MASK_ADD,
            functional.MASK_EXCLUDE) == tuple(enums.MaskKind)
    assert matmul_configs.ACTIVATIONS == {k: int(v) for k, v in enums.ACTIVATION_NAMES.items()}


def test_triton_tile_constants_agree():
    pytest.importorskip("triton")
    from fastattn.kernels import attention_tiles

    assert (attention_tiles.MASK_NONE, attention_tiles.MASK_KEEP, attention_tiles.MASK_ADD) == (
        enums.MaskKind.NONE, enums.MaskKind.KEEP, enums.MaskKind.ADD)
