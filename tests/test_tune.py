"""Tuned launch tables: lookup, override and the launchers' use of them; ``fastattn tune``'s
case list and table layout (the timing itself needs a GPU)."""
import json
import subprocess
import sys

import pytest
import torch

from fastattn import tune, tuning
from fastattn.kernels import attention_configs as AC
from fastattn.kernels import layer_norm_configs as LC

H100_SMEM = AC.smem_limit_for(9)


@pytest.fixture
def shipped_table(tmp_path, monkeypatch):
    """A tuned table shipped for a fake device named 'NVIDIA Test GPU'."""
    monkeypatch.setattr(tuning, "TUNED_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_device_name", lambda device: "NVIDIA Test GPU")
    tuning._load.cache_clear()
    key = AC.tuned_key("fwd", 64, "float16", 1, "row", 512, False)
    table = {"device": "NVIDIA Test GPU", "entries": {
        "attention": {key: {"config": dict(block_m=64, block_n=128, num_warps=4, num_stages=2)},
                      AC.tuned_key("bwd_dq", 64, "float16", 0, "none", 512, False):
                          {"config": dict(block_m=64, block_n=32, num_warps=4, stages=9)}},
        "layer_norm": {LC.tuned_key(768, "fwd", "float16"):
                       {"config": dict(block_m=4, block_n=1024, num_warps=8)}}}}
    (tmp_path / "nvidia-test-gpu.json").write_text(json.dumps(table))
    yield tmp_path
    tuning._load.cache_clear()


def test_device_slug():
    assert tuning.device_slug("NVIDIA H200") == "nvidia-h200"
    assert tuning.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_launchers_pick_the_shipped_table(shipped_table):
    dev = torch.device("cuda")
    cfg = AC.pick_config("fwd", 64, "float16", 1, 512, H100_SMEM, mask_layout="row", device=dev)
    assert cfg == AC.AttnConfig(64, 128, 4, 2)
    # another case, and the same case without a device, use the static table
    static = AC.pick_config("fwd", 64, "float16", 1, 512, H100_SMEM, mask_layout="row")
    assert static != cfg
    assert AC.pick_config("fwd", 64, "bfloat16", 1, 512, H100_SMEM, mask_layout="row",
                          device=dev) == AC.pick_config("fwd", 64, "bfloat16", 1, 512, H100_SMEM,
                                                        mask_layout="row")
    # an entry with fields of another version is ignored
    assert AC.pick_config("bwd_dq", 64, "float16", 0, 512, H100_SMEM, mask_layout="none",
                          device=dev) == AC.pick_config("bwd_dq", 64, "float16", 0, 512,
                                                        H100_SMEM, mask_layout="none")
    # a tuned config that does not fit this device's shared memory is not used
    assert AC.pick_config("fwd", 64, "float16", 1, 512, 90 * 1024, mask_layout="row",
                          device=dev) != cfg
    assert LC.pick_config(768, "fwd", "float16", dev) == LC.LayerNormConfig(4, 1024, 8)
    assert LC.pick_config(768, "bwd", "float16", dev) == LC.pick_config(768, "bwd")


def test_override_wins_and_static_override_hides_the_table(shipped_table):
    dev = torch.device("cuda")
    key = AC.tuned_key("fwd", 64, "float16", 1, "row", 512, False)
    forced = dict(block_m=128, block_n=32, num_warps=4, num_stages=3)
    with tuning.override("attention", key, forced):
        assert AC.pick_config("fwd", 64, "float16", 1, 512, H100_SMEM, mask_layout="row",
                              device=dev) == AC.AttnConfig(**forced)
    with tuning.override("attention", key, None):
        assert AC.pick_config("fwd", 64, "float16", 1, 512, H100_SMEM, mask_layout="row",
                              device=dev) == AC.pick_config("fwd", 64, "float16", 1, 512,
                                                            H100_SMEM, mask_layout="row")
    assert tuning.lookup("attention", key, dev) == {"block_m": 64, "block_n": 128,
                                                    "num_warps": 4, "num_stages": 2}


def test_no_table_off_cuda():
    assert tuning.table_for(torch.device("cpu")) is None
    assert tuning.lookup("attention", "anything", torch.device("cpu")) is None


def test_bert_cases_are_unique_pruned_and_start_with_the_static_choice():
    cases = tune.bert_cases(9)
    keys = [(c.family, c.key) for c in cases]
    assert len(keys) == len(set(keys))
    assert {c.family for c in cases} >= {"attention", "varlen", "layer_norm"}
    assert cases[0].family == "attention" and "d64" in cases[0].key
    for case in cases:
        assert case.candidates, case.label
        if case.family in ("attention", "varlen"):
            kernel, d = case.key.split("|")[:2]
            dtype = case.key.split("|")[2]
            static = AC.pick_config(kernel, int(d[1:]), dtype, int(case.key.split("|")[3][4]),
                                    512, H100_SMEM, mask_layout=case.key.split("|")[3][6:])
            assert case.candidates[0] == dict(block_m=static.block_m, block_n=static.block_n,
                                              num_warps=static.num_warps,
                                              num_stages=static.num_stages)
            for c in case.candidates:
                assert AC.AttnConfig(**c).smem_bytes(kernel, int(d[1:]), 2) <= H100_SMEM
    small = tune.bert_cases(8, smem_limit=99 * 1024, families=["attention"])
    assert sum(len(c.candidates) for c in small) < sum(
        len(c.candidates) for c in cases if c.family == "attention")


def test_entry_keeps_the_static_choice_within_noise():
    case = tune.TuneCase("attention", "k", "label", [{"a": 0}, {"a": 1}, {"a": 2}])
    noisy = tune._entry(case, [1.00, 0.99, None], [None, None, "OutOfResources"])
    assert noisy["config"] == {"a": 0} and noisy["ms"] == 1.00
    assert noisy["candidates"][2]["error"] == "OutOfResources"
    better = tune._entry(case, [1.00, 0.80, 0.90], [None] * 3)
    assert better["config"] == {"a": 1} and better["speedup"] == pytest.approx(1.25)


def test_dry_run_lists_cases_without_a_gpu(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastattn.cli", "tune", "--dry-run", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    table = json.loads((tmp_path / "dry-run.json").read_text())
    n_cases = sum(len(v) for v in table["entries"].values())
    assert f"tune --dry-run: {n_cases} cases" in out.stdout
    assert n_cases == len(tune.bert_cases(9))
    entry = next(iter(table["entries"]["attention"].values()))
    assert entry["ms"] is None and entry["candidates"][0]["config"] == entry["config"]
