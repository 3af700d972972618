"""The static kernel report: SASS loop reading, and faithful compiles of real launches.

The SASS tests read a hand-written listing (no compiler).  The compile test runs, in a
subprocess without the interpreter, the padded attention forward at a BERT shape through
:func:`fastattn.kernel_report.compile_launch` and checks the row against the compiler's own
figures: the specialization is the JIT's (strides divisible by 16, an odd head count not),
registers and spill bytes equal ``ptxas -v``'s (also for a toy kernel that spills), the loop
figures are the same read by nvdisasm.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from fastattn import sass

# An outer loop (0x40..0x100) around an inner one with 2 HGMMA (0x50..0xa0), then a separate
# loop with 1 HMMA (0x110..0x140); predicated and unconditional back edges; one forward branch.
LISTING = """
	code for sm_90a
		Function : toy_kernel
	.headerflags	@"EF_CUDA_SM90"
        /*0000*/                   MOV R1, c[0x0][0x28] ;                /* 0x0 */
        /*0010*/                   STL.64 [R1], R2 ;                     /* 0x0 */
        /*0020*/                   LDL [R1+0x8], R4 ;                    /* 0x0 */
        /*0030*/               @P0 BRA 0x110 ;                           /* 0x0 */
        /*0040*/                   IMAD R2, R3, R4, R5 ;                 /* 0x0 */
        /*0050*/                   UTMALDG.2D [UR8], [UR4] ;             /* 0x0 */
        /*0060*/                   HGMMA.64x64x16.F32 R24, gdesc[UR8], R24 ;  /* 0x0 */
        /*0070*/                   MUFU.EX2 R3, R3 ;                     /* 0x0 */
        /*0080*/                   HGMMA.64x64x16.F32 R24, gdesc[UR8], R24, gsb0 ;  /* 0x0 */
        /*0090*/                   FADD R3, R3, R4 ;                     /* 0x0 */
        /*00a0*/              @!P1 BRA 0x50 ;                            /* 0x0 */
        /*00b0*/                   LDG.E R5, [R6.64] ;                   /* 0x0 */
        /*00c0*/                   LDSM.16.M88.4 R8, [R9] ;              /* 0x0 */
        /*00d0*/                   LDGSTS.E.128 [R1], [R2.64] ;          /* 0x0 */
        /*00e0*/                   IADD3 R1, R1, 0x1, RZ ;               /* 0x0 */
        /*00f0*/                   ISETP.GE.AND P2, PT, R1, R2, PT ;     /* 0x0 */
        /*0100*/              @!P2 BRA 0x40 ;                            /* 0x0 */
        /*0110*/                   HMMA.16816.F32 R8, R4, R6, R8 ;       /* 0x0 */
        /*0120*/                   FMUL R3, R3, R4 ;                     /* 0x0 */
        /*0130*/                   FMUL R3, R3, R4 ;                     /* 0x0 */
        /*0140*/                   BRA 0x110 ;                           /* 0x0 */
        /*0150*/                   EXIT ;                                /* 0x0 */
"""


def test_loops_and_counts_of_a_listing():
    insns = sass.parse(LISTING)["toy_kernel"]
    assert len(insns) == 22 and insns[3].base == "BRA"
    loops = sass.find_loops(insns)
    assert [(lp.start, lp.end) for lp in loops] == [(0x40, 0x100), (0x50, 0xa0), (0x110, 0x140)]
    hot = sass.hot_loop(loops)
    assert (hot.start, hot.end, hot.instructions, hot.mma) == (0x50, 0xa0, 6, 2)
    assert hot.counts["mufu"] == 1 and hot.counts["tma"] == 1 and hot.counts["hgmma"] == 2
    counts = sass.count(insns)
    assert counts["mma"] == 3 and counts["ldsm"] == 1 and counts["ldgsts"] == 1
    assert counts["ldg"] == 1 and counts["hmma"] == 1
    assert sass._local_bytes(insns, "STL") == 8 and sass._local_bytes(insns, "LDL") == 4


def test_atomic_counts_read_modify_write_only():
    """A reduction atomic counts; the exchange that writes an on-device TMA descriptor not."""
    listing = LISTING.replace("FMUL R3, R3, R4 ;                     /* 0x0 */\n        /*0130*/",
                              "REDG.E.ADD.F32.FTZ.RN.STRONG.GPU [R2.64], R5 ;\n        /*0130*/") \
        .replace("IADD3 R1, R1, 0x1, RZ", "ATOMG.E.EXCH.STRONG.GPU PT, RZ, [R2], R5")
    counts = sass.count(sass.parse(listing)["toy_kernel"])
    assert counts["atomic"] == 1
    assert sass.count(sass.parse(LISTING)["toy_kernel"])["atomic"] == 0


def test_tie_between_innermost_loops_picks_the_shorter():
    listing = LISTING.replace("HMMA.16816.F32 R8, R4, R6, R8", "HGMMA.64x64x16.F32 R8, R4, R8") \
        .replace("FMUL R3, R3, R4 ;                     /* 0x0 */\n        /*0130*/",
                 "HGMMA.64x64x16.F32 R8, R4, R8 ;       /* 0x0 */\n        /*0130*/")
    loops = sass.find_loops(sass.parse(listing)["toy_kernel"])
    hot = sass.hot_loop(loops)
    assert (hot.start, hot.mma, hot.instructions) == (0x110, 2, 4)


def test_metric_formulas():
    # the dK/dV figure of the backward: (348 - 36) * 128 / (32 * 64)
    assert sass.non_mma_per_score(348, 36, 128, 32, 64) == pytest.approx(19.5)
    per_mac = 122 * 256 / (128 * 64 * 64)
    assert sass.non_mma_per_mac(126, 4, 256, 128, 64, 64) == pytest.approx(per_mac)
    assert sass.non_mma_per_score(None, None, 128, 32, 64) is None


SCRIPT = textwrap.dedent("""
    import json, torch, triton, triton.language as tl
    from fastattn import sass
    from fastattn.kernel_report import compile_launch
    from fastattn.launch_capture import capture_sources, compile_source
    from fastattn.ops.attention import attention_forward

    @triton.jit
    def spill_kernel(X, Y, N: tl.constexpr):  # 512 fp32 values per thread stay live: spills
        offs = tl.arange(0, N)
        x = tl.load(X + offs)
        tl.store(Y + offs, x / tl.sum(x * x, 0))

    n, h, L, d = 2, 12, 128, 64
    proj = torch.empty(n, L, 3 * h * d, dtype=torch.float16)
    q, k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in proj.chunk(3, -1))
    launch = lambda: attention_forward(q, k, v, None, 0, False, d ** -0.5)
    rows = compile_launch(launch, "sm_90a", labels=dict(name="bert", dtype="fp16"))
    (_, source), = capture_sources(launch, "sm_90a")
    cubin = compile_source(source).asm["cubin"]
    by_nvdisasm = sass.parse(sass._run_on_cubin([sass.tool("nvdisasm"), "-c"], cubin))
    loop = sass.hot_loop(sass.find_loops(next(iter(by_nvdisasm.values()))))
    x = torch.empty(16384)
    spill = compile_launch(lambda: spill_kernel[(1,)](x, x, N=16384, num_warps=1), "sm_80")
    print("ROWS=" + json.dumps(dict(rows=rows, nvdisasm=[loop.instructions, loop.mma],
                                    spill=spill)))
""")


def _ptxas_log(log):
    """{function: (registers, spill stores, spill loads)} from ptxas -v output."""
    out, name, spills = {}, None, None
    for line in log.splitlines():
        if "Compiling entry function" in line:
            name = line.split("'")[1]
        elif "bytes spill stores" in line:
            spills = [int(w) for w in line.replace(",", "").split() if w.isdigit()][1:3]
        elif "Used " in line and "registers" in line and name:
            out[name] = (int(line.split("Used ")[1].split()[0]), *spills)
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    script = tmp / "report_script.py"  # a file: Triton reads the toy kernel's source
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # a fresh cache: triton runs ptxas, whose -v log it prints
    env.update(TRITON_CACHE_DIR=str(tmp / "cache"), TRITON_DUMP_PTXAS_LOG="1",
               PYTHONPATH=os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads(out.stdout.split("ROWS=")[-1])
    return data, _ptxas_log(out.stdout)


def test_attention_forward_row_is_the_jit_specialization(compiled):
    data, ptxas = compiled
    (row,) = data["rows"]
    assert row["error"] is None
    assert row["name"] == "attention_fwd-bert-sm_90a" and row["kernel"] == "attention_fwd"
    divisible = row["divisible"].split()
    assert {"Q", "K", "V", "O", "stride_qz", "stride_qm", "L_q", "D"} <= set(divisible)
    assert "H" not in divisible  # 12 heads: not a multiple of 16
    assert (row["block_m"], row["block_n"], row["num_warps"]) == (128, 128, 8)  # the sm_90a pick
    assert row["loop_threads"] == 256 and row["mma"] == "wgmma" and row["loop_mma"] > 0
    expected = (row["loop_instructions"] - row["loop_mma"]) * 256 / (128 * 128)
    assert row["non_mma_per_score"] == pytest.approx(expected, abs=0.01)
    assert data["nvdisasm"] == [row["loop_instructions"], row["loop_mma"]]
    assert ptxas["attention_fwd_kernel"] == (row["registers"], row["spill_stores"],
                                             row["spill_loads"])


def test_registers_and_spills_agree_with_ptxas(compiled):
    data, ptxas = compiled
    (row,) = data["spill"]
    assert row["error"] is None and row["spill_stores"] > 0 and row["spill_loads"] > 0
    assert row["spill_bytes"] == row["spill_stores"] + row["spill_loads"]
    assert ptxas["spill_kernel"] == (row["registers"], row["spill_stores"], row["spill_loads"])
    assert row["mma"] == "none" and row["loop_instructions"] is None
