"""Train a small BERT sentence classifier on fastattn's fused modules (GLUE SST-2 file layout).

    python examples/finetune_classification.py                       # the bundled sample data
    python examples/finetune_classification.py --train SST-2/train.tsv --dev SST-2/dev.tsv \
        --device cuda --epochs 3

Input files: a header line ``sentence<TAB>label``, then one ``sentence<TAB>label`` per line
(label an integer class id).  A word-level vocabulary is built from the training file
(lower-cased, words and punctuation, ``--min-freq``; ``<pad>`` = 0, ``<unk>`` = 1).  Batches are
padded to their longest sentence, the model is trained with AdamW, and after every epoch the
training loss and the held-out accuracy are printed.  At the end a checkpoint (state dict, vocab,
config) is written, loaded into a fresh model, and its accuracy is checked against the trained
model's.
"""
from __future__ import annotations

import argparse
import collections
import math
import os
import random
import re
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from fastattn.modules.classification import BertForSequenceClassification

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "data", "sst2_sample")
PAD, UNK = "<pad>", "<unk>"
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> List[str]:
    """Lower-cased words (with "n't"-style suffixes kept) and single punctuation marks."""
    return TOKEN.findall(text.lower())


def read_tsv(path: str) -> List[Tuple[str, int]]:
    """Rows (sentence, label) of a GLUE SST-2 style file; the header must be sentence/label."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header[:2] != ["sentence", "label"]:
            raise ValueError(f"{path}: the header must be 'sentence<TAB>label', got {header}")
        rows = []
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            sentence, sep, label = line.rpartition("\t")
            if not sep or not label.strip().lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'sentence<TAB>label', got {line!r}")
            rows.append((sentence, int(label)))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return rows


def build_vocab(sentences: Sequence[str], min_freq: int = 1) -> Dict[str, int]:
    """token -> id; ``<pad>`` is 0, ``<unk>`` 1, then tokens seen >= min_freq times, by count."""
    counts = collections.Counter(tok for s in sentences for tok in tokenize(s))
    vocab = {PAD: 0, UNK: 1}
    for tok, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if c >= min_freq:
            vocab[tok] = len(vocab)
    return vocab


def encode(sentence: str, vocab: Dict[str, int], max_length: int) -> List[int]:
    ids = [vocab.get(tok, vocab[UNK]) for tok in tokenize(sentence)][:max_length]
    return ids or [vocab[UNK]]


def batches(data: Sequence[Tuple[List[int], int]], batch_size: int, *, shuffle: bool,
            rng: random.Random = None):
    """Yield (input_ids (B, L_max), attention_mask (B, L_max), labels (B,)), padded with 0."""
    order = list(range(len(data)))
    if shuffle:
        rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        rows = [data[j] for j in order[i:i + batch_size]]
        longest = max(len(ids) for ids, _ in rows)
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        for r, (seq, _) in enumerate(rows):
            ids[r, :len(seq)] = torch.tensor(seq)
        yield ids, (ids != 0).long(), torch.tensor([label for _, label in rows])


@torch.no_grad()
def evaluate(model, data, batch_size: int, device) -> float:
    """Accuracy on ``data``."""
    model.eval()
    correct = 0
    for ids, mask, labels in batches(data, batch_size, shuffle=False):
        logits = model(ids.to(device), mask.to(device))
        correct += (logits.argmax(-1).cpu() == labels).sum().item()
    return correct / len(data)


def build_model(config: dict, device) -> BertForSequenceClassification:
    return BertForSequenceClassification(**config, device=device)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", default=os.path.join(SAMPLE, "train.tsv"))
    p.add_argument("--dev", default=os.path.join(SAMPLE, "dev.tsv"))
    p.add_argument("--checkpoint",
                   default=os.path.join(tempfile.gettempdir(), "fastattn_sst2_classifier.pt"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default=None, choices=["auto", "triton", "torch", "cuda"],
                   help="fastattn backend (default: the process default, 'auto')")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--min-freq", type=int, default=1)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--embed-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--forward-expansion", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.max_steps is not None and args.max_steps < 1:
        p.error(f"--max-steps must be >= 1, got {args.max_steps}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = torch.device(args.device)
    start = time.perf_counter()

    train_rows, dev_rows = read_tsv(args.train), read_tsv(args.dev)
    vocab = build_vocab([s for s, _ in train_rows], args.min_freq)
    num_classes = max(label for _, label in train_rows + dev_rows) + 1
    train = [(encode(s, vocab, args.max_length), y) for s, y in train_rows]
    dev = [(encode(s, vocab, args.max_length), y) for s, y in dev_rows]
    config = dict(vocab_size=len(vocab), num_classes=num_classes, embed_size=args.embed_size,
                  num_layers=args.num_layers, heads=args.heads,
                  forward_expansion=args.forward_expansion, dropout=args.dropout,
                  max_length=args.max_length, pad_id=vocab[PAD], pooling=args.pooling,
                  backend=args.backend)
    model = build_model(config, device)
    print(f"{len(train)} train / {len(dev)} dev sentences, vocab {len(vocab)}, "
          f"{num_classes} classes, {sum(p.numel() for p in model.parameters())} parameters, "
          f"device {device}, backend {args.backend or 'default'}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up over 10 %, then linear decay
        opt, lambda s: min((s + 1) / max(1, total // 10), max(0.0, (total - s) / total)))
    step, history = 0, []
    for epoch in range(1, args.epochs + 1):
        model.train()
        loss_sum, seen = 0.0, 0
        for ids, mask, labels in batches(train, args.batch_size, shuffle=True, rng=rng):
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            loss = F.cross_entropy(model(ids, mask), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            step += 1
            if step >= total:
                break
        acc = evaluate(model, dev, args.batch_size, device)
        history.append({"epoch": epoch, "train_loss": loss_sum / seen, "dev_accuracy": acc})
        print(f"epoch {epoch}: train loss {loss_sum / seen:.4f}, dev accuracy {acc:.4f} "
              f"({step} steps, {time.perf_counter() - start:.1f} s)")
        if step >= total:
            break

    os.makedirs(os.path.dirname(os.path.abspath(args.checkpoint)), exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "vocab": vocab, "config": config},
               args.checkpoint)
    ckpt = torch.load(args.checkpoint, map_location=device)
    fresh = build_model(ckpt["config"], device)
    fresh.load_state_dict(ckpt["state_dict"])
    reloaded = evaluate(fresh, [(encode(s, ckpt["vocab"], args.max_length), y)
                                for s, y in dev_rows], args.batch_size, device)
    final = history[-1]["dev_accuracy"]
    print(f"checkpoint {args.checkpoint}: reloaded dev accuracy {reloaded:.4f} "
          f"({'matches' if reloaded == final else 'DIFFERS from'} {final:.4f}); "
          f"total {time.perf_counter() - start:.1f} s")
    if reloaded != final:
        raise SystemExit("the reloaded checkpoint does not reproduce the trained model's accuracy")
    return {"history": history, "reloaded_accuracy": reloaded, "steps": step,
            "checkpoint": args.checkpoint, "vocab_size": len(vocab)}


if __name__ == "__main__":
    main(sys.argv[1:])
