"""examples/finetune_classification.py and examples/make_sst2_sample.py, end to end."""
import filecmp
import importlib.util
import os

import pytest
import torch

from fastattn.modules.classification import BertForSequenceClassification

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ft = _load("finetune_classification")
make = _load("make_sst2_sample")

ROWS = [("A gripping, moving film!", 1), ("it wasn't good at all", 0),
        ("dull and tedious", 0), ("a good film", 1), ("good good fun", 1), ("not fun", 0)]


def _write(path, rows, header="sentence\tlabel"):
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for s, y in rows:
            f.write(f"{s}\t{y}\n")
    return str(path)


def test_tokenize():
    assert ft.tokenize("A gripping, moving film!") == ["a", "gripping", ",", "moving", "film", "!"]
    assert ft.tokenize("It wasn't GOOD") == ["it", "wasn't", "good"]


def test_read_tsv_and_vocab(tmp_path):
    rows = ft.read_tsv(_write(tmp_path / "train.tsv", ROWS))
    assert rows == ROWS
    vocab = ft.build_vocab([s for s, _ in rows], min_freq=2)
    assert vocab == {"<pad>": 0, "<unk>": 1, "good": 2, "a": 3, "film": 4, "fun": 5}
    assert len(ft.build_vocab([s for s, _ in rows])) == 2 + 16
    assert ft.encode("a good movie", vocab, 10) == [3, 2, 1]
    assert ft.encode("a good film", vocab, 2) == [3, 2]
    assert ft.encode("", vocab, 2) == [1]  # never an empty sequence


def test_read_tsv_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="header"):
        ft.read_tsv(_write(tmp_path / "a.tsv", ROWS, header="text\tlabel"))
    with pytest.raises(ValueError, match=r"b.tsv:3: expected"):
        ft.read_tsv(_write(tmp_path / "b.tsv", [("fine", 1), ("no label here", "x")]))
    with pytest.raises(ValueError, match="no data rows"):
        ft.read_tsv(_write(tmp_path / "c.tsv", []))


def test_batches_pad_to_the_longest_in_the_batch():
    data = [([5, 6, 7], 1), ([8], 0), ([9, 9], 1)]
    (ids, mask, labels), (ids2, mask2, _) = ft.batches(data, 2, shuffle=False)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.tolist() == [1, 0]
    assert ids2.tolist() == [[9, 9]] and mask2.tolist() == [[1, 1]]


def test_sample_data_is_what_the_generator_writes(tmp_path):
    make.main(["--out-dir", str(tmp_path)])
    for name in ("train.tsv", "dev.tsv"):
        assert filecmp.cmp(tmp_path / name, os.path.join(ft.SAMPLE, name), shallow=False), name
    train, dev = ft.read_tsv(ft.SAMPLE + "/train.tsv"), ft.read_tsv(ft.SAMPLE + "/dev.tsv")
    assert not {s for s, _ in train} & {s for s, _ in dev}
    lengths = [len(s.split()) for s, _ in train + dev]
    assert min(lengths) >= 3 and max(lengths) <= 60
    assert 0.4 < sum(y for _, y in train) / len(train) < 0.6


@pytest.mark.parametrize("backend,data", [("torch", "sample"), ("triton", "tiny")])
def test_runs_end_to_end_and_reloads(tmp_path, backend, data, capsys):
    if data == "sample":
        train, dev = os.path.join(ft.SAMPLE, "train.tsv"), os.path.join(ft.SAMPLE, "dev.tsv")
    else:
        train = _write(tmp_path / "train.tsv", ROWS)
        dev = _write(tmp_path / "dev.tsv", ROWS[:3])
    ckpt = tmp_path / "model.pt"
    result = ft.main(["--train", train, "--dev", dev, "--checkpoint", str(ckpt),
                      "--device", str("cuda" if torch.cuda.is_available() else "cpu"),
                      "--backend", backend, "--epochs", "2", "--max-steps", "3",
                      "--batch-size", "4", "--embed-size", "32", "--heads", "2",
                      "--num-layers", "1", "--seed", "1"])
    out = capsys.readouterr().out
    assert "epoch 1: train loss" in out and "reloaded dev accuracy" in out
    assert result["steps"] == 3
    assert result["reloaded_accuracy"] == result["history"][-1]["dev_accuracy"]
    ckpt_data = torch.load(ckpt, map_location="cpu")
    assert ckpt_data["vocab"]["<pad>"] == 0 and ckpt_data["vocab"]["<unk>"] == 1
    assert ckpt_data["config"]["backend"] == backend
    model = BertForSequenceClassification(**ckpt_data["config"])
    model.load_state_dict(ckpt_data["state_dict"])


def test_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        ft.parse_args(["--epochs", "0"])
    with pytest.raises(SystemExit):
        ft.parse_args(["--backend", "tpu"])
