"""The benchmark's cases: which sizes, masks and providers, and the work each case does.

Families (``--only``): attention (functional attention incl. training with attention
dropout + the self-attention module), layernorm, feedforward, encoder, hf (Hugging Face
``BertModel`` at the MiniLM and BERT-base shapes: eager, sdpa, ``attn_implementation="fastattn"``
and ``fastattn.optimize``).  Every case carries its FLOP or byte count (formulas in
:mod:`fastattn.benchmark.flops`) and builds its inputs only when it runs.

Sizes: BERT-base on CUDA (12 heads x 64, hidden 768, B*L ~ 16k tokens, bf16).  On CPU the
same workloads run in fp32 with fewer tokens, shorter sequences, fewer rows and a shallower
encoder (:func:`sizes_for`), so a CPU run stays short and its report has the same shape.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from fastattn import reference
from fastattn.benchmark import flops as F
from fastattn.benchmark import providers as P

FAMILIES = ("attention", "layernorm", "feedforward", "encoder", "hf")
MODES = ("fwd", "fwd+bwd")
ATTENTION_MASKS = ("none", "key-padding", "boolean", "causal")
HIDDEN = 768
PADDED_MEAN = 0.6  # padded batches: real lengths spread evenly over [0.2 L, L], mean 0.6 L
VOCAB, FORWARD_EXPANSION = 30522, 4

ATTENTION_PROVIDERS = ("fastattn", "eager", "sdpa", "sdpa-flash", "sdpa-efficient",
                       "sdpa-cudnn", "sdpa-math", "flash-attn", "xformers")
DROPOUT_PROVIDERS = ("fastattn", "eager", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-math")
ATTENTION_DROPOUT = 0.1  # BERT's attention_probs_dropout_prob
SELF_ATTENTION_PROVIDERS = ("fastattn", "eager", "torch-mha")
LAYERNORM_PROVIDERS = ("fastattn", "eager", "liger")
FEEDFORWARD_PROVIDERS = ("fastattn", "fastattn-triton", "cublas-epilogue", "eager")
ENCODER_PROVIDERS = ("fastattn", "fastattn-padded", "eager", "torch-encoder")
PADDING_RATIOS = (0.0, 0.25, 0.5, 0.75)
HF_PROVIDERS = ("eager", "sdpa", "fastattn-attn", "fastattn-optimize")
# Hugging Face BertConfig shapes: (name, layers, hidden, heads, intermediate)
HF_MODELS = {"MiniLM": ("MiniLM-L6 (all-MiniLM-L6-v2 shape)", 6, 384, 12, 1536),
             "BERT-base": ("BERT-base", 12, 768, 12, 3072)}
BERT_LENGTH = 512  # priority 0 ("the BERT cases"): what a BERT encoder runs, L <= 512


@dataclasses.dataclass(frozen=True)
class Sizes:
    dtype: torch.dtype
    attention_tokens: int                       # B * L per attention case
    attention_lengths: Tuple[int, ...]
    attention_grid: Tuple[Tuple[int, Tuple[str, ...]], ...]   # (head_dim, masks)
    layernorm_rows: int
    layernorm_hidden: Tuple[int, ...]
    feedforward_tokens: int
    encoder_batch: int
    encoder_length: int
    encoder_layers: int
    vocab: int = VOCAB
    # hf family: (model, batch, length, layers or None for the model's own) per case
    hf_runs: Tuple[Tuple[str, int, int, Optional[int]], ...] = ()


def sizes_for(device: torch.device, quick: bool = False) -> Sizes:
    """Full BERT-base sizes on CUDA; scaled-down sizes on CPU (and for ``--quick``)."""
    full_grid = ((64, ATTENTION_MASKS), (128, ("none", "causal")))
    if device.type == "cuda":
        hf = (("MiniLM", 16, 128, None), ("BERT-base", 16, 128 if quick else 512, None))
        return Sizes(torch.bfloat16, 16384, (128, 512) if quick else (128, 512, 2048, 8192),
                     full_grid, 16384, (768, 1024, 4096, 8192), 16384,
                     16, 512, 2 if quick else 12, hf_runs=hf)
    if quick:
        return Sizes(torch.float32, 128, (16, 64, 128), full_grid, 256,
                     (768, 1024, 4096, 8192), 64, 2, 16, 1, vocab=1024,
                     hf_runs=(("MiniLM", 2, 32, 2), ("BERT-base", 2, 32, 1)))
    # the MiniLM 16 x 128 batch: the shape of sentence-embedding serving on a CPU
    return Sizes(torch.float32, 512, (16, 64, 256, 1024), full_grid, 1024,
                 (768, 1024, 4096, 8192), 512, 2, 64, 2, vocab=8192,
                 hf_runs=(("MiniLM", 16, 128, None), ("BERT-base", 4, 128, None)))


def padded_lengths(batch: int, length: int) -> List[int]:
    """Real lengths of a padded batch: evenly spread over [0.2 L, L] (mean 0.6 L)."""
    if batch == 1:
        return [max(1, round(PADDED_MEAN * length))]
    lo = 0.2 * length
    return [max(1, round(lo + (length - lo) * i / (batch - 1))) for i in range(batch)]


@dataclasses.dataclass
class Case:
    """One measured configuration; ``build()`` makes its inputs, ``providers`` run on them."""
    family: str
    workload: str           # table title, e.g. "attention fwd (D=64)"
    mode: str               # "fwd" or "fwd+bwd"
    label: str              # row label, e.g. "B=128 L=128 mask=none"
    params: Dict[str, object]
    sweep: str              # the params key plotted on the x axis
    panel: str              # plot panel within the family's figure
    work: float             # FLOPs (unit "flop") or bytes (unit "byte") per call
    unit: str
    providers: Tuple[str, ...]
    build: Callable[[], Dict[str, object]]
    provider_fn: Callable[[str, Dict[str, object]], P.Run]
    eager: str = "eager"
    torch_peer: Optional[str] = None   # torch's own fast implementation, for "vs torch"
    compare: bool = True    # False: outputs are random (dropout), no error against eager
    valid_rows: Optional[Callable[[Dict[str, object]], Optional[torch.Tensor]]] = None
    priority: int = 0       # lower runs first (a time budget drops the rest)


def _randn(shape, dtype, device, grad: bool, scale: float = 1.0) -> torch.Tensor:
    t = (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(dtype)
    return t.requires_grad_(grad)


def _keep_from_lengths(lengths: Sequence[int], length: int, device) -> torch.Tensor:
    """(B, L) bool, True at the first lengths[b] positions of row b."""
    real = torch.tensor(lengths, device=device)
    return torch.arange(length, device=device)[None, :] < real[:, None]


def _attention_cases(s: Sizes, device: torch.device) -> List[Case]:
    cases = []
    for mode in MODES:
        for head_dim, masks in s.attention_grid:
            heads = HIDDEN // head_dim
            for mask_kind in masks:
                for length in s.attention_lengths:
                    cases.append(_attention_case(s, device, mode, head_dim, heads, mask_kind,
                                                 length))
    for length in s.attention_lengths:  # training: attention dropout in forward and backward
        cases.append(_attention_case(s, device, "fwd+bwd", 64, HIDDEN // 64, "key-padding",
                                     length, dropout=ATTENTION_DROPOUT))
    for mode in MODES:
        for mask_kind in ("none", "key-padding"):
            for length in s.attention_lengths:
                cases.append(_self_attention_case(s, device, mode, mask_kind, length))
    return cases


def _attention_case(s, device, mode, head_dim, heads, mask_kind, length,
                    dropout: float = 0.0) -> Case:
    batch = max(1, s.attention_tokens // length)
    lengths = padded_lengths(batch, length) if mask_kind == "key-padding" else None
    grad = mode != "fwd"

    def build():
        q, k, v = (_randn((batch, heads, length, head_dim), s.dtype, device, grad)
                   for _ in range(3))
        mask = sdpa_mask = None
        if mask_kind == "key-padding":
            mask = _keep_from_lengths(lengths, length, device)            # (B, L)
            sdpa_mask = mask[:, None, None, :]
        elif mask_kind == "boolean":
            mask = torch.rand(batch, 1, length, length, device=device) < 0.8
            mask |= torch.eye(length, dtype=torch.bool, device=device)   # no empty row
            sdpa_mask = mask
        return dict(q=q, k=k, v=v, mask=mask, sdpa_mask=sdpa_mask, mask_kind=mask_kind,
                    causal=mask_kind == "causal", mode=mode, dropout=dropout,
                    dout=_randn(q.shape, s.dtype, device, False) if grad else None)

    def valid_rows(state):  # padded queries hold no real token: left out of the error check
        return state["mask"] if mask_kind == "key-padding" else None

    drop = f", dropout {dropout}" if dropout else ""
    return Case(
        family="attention", workload=f"attention {mode}{drop} (H={heads}, D={head_dim})",
        mode=mode, label=f"B={batch} L={length} mask={mask_kind}",
        params=dict(batch=batch, heads=heads, length=length, head_dim=head_dim, mask=mask_kind,
                    dtype=str(s.dtype).replace("torch.", ""), real_lengths=lengths,
                    dropout=dropout),
        sweep="length", panel=f"{mode}{drop}, D={head_dim}, mask={mask_kind}",
        work=F.attention_flops(batch, heads, length, length, head_dim,
                               causal=mask_kind == "causal", mode=mode, lengths=lengths),
        unit="flop", providers=DROPOUT_PROVIDERS if dropout else ATTENTION_PROVIDERS,
        build=build, provider_fn=P.attention_provider, torch_peer="sdpa",
        valid_rows=lambda st: _rows_bhld(valid_rows(st)), compare=not dropout,
        priority=0 if head_dim == 64 and mask_kind in ("none", "key-padding")
        and length <= BERT_LENGTH else 1)


def _rows_bhld(keep: Optional[torch.Tensor]):
    """(B, L) keep -> selector for (B, H, L, D) tensors (None: every row)."""
    return None if keep is None else keep[:, None, :, None]


def _self_attention_case(s, device, mode, mask_kind, length) -> Case:
    heads = HIDDEN // 64
    batch = max(1, s.attention_tokens // length)
    lengths = padded_lengths(batch, length) if mask_kind == "key-padding" else None
    grad = mode != "fwd"

    def build():
        ref = reference.SelfAttention(HIDDEN, heads).to(device, s.dtype)
        x = _randn((batch, length, HIDDEN), s.dtype, device, grad)
        mask = _keep_from_lengths(lengths, length, device) if lengths else None
        return dict(x=x, mask=mask, mode=mode, reference=ref,
                    dout=_randn(x.shape, s.dtype, device, False) if grad else None)

    proj = F.linear_flops(batch * length, HIDDEN, HIDDEN, mode=mode) * 4
    attn = F.attention_flops(batch, heads, length, length, 64, mode=mode, lengths=lengths)
    return Case(
        family="attention", workload=f"self-attention module {mode} (E={HIDDEN}, H={heads})",
        mode=mode, label=f"B={batch} L={length} mask={mask_kind}",
        params=dict(batch=batch, heads=heads, length=length, head_dim=64, mask=mask_kind,
                    dtype=str(s.dtype).replace("torch.", ""), real_lengths=lengths),
        sweep="length", panel=f"module {mode}, mask={mask_kind}", work=proj + attn,
        unit="flop", providers=SELF_ATTENTION_PROVIDERS, build=build,
        provider_fn=P.self_attention_provider, torch_peer="torch-mha",
        valid_rows=lambda st: None if st["mask"] is None else st["mask"][:, :, None],
        priority=1)


def _layernorm_cases(s: Sizes, device: torch.device) -> List[Case]:
    cases = []
    for mode in MODES:
        for hidden in s.layernorm_hidden:
            def build(hidden=hidden, mode=mode):
                grad = mode != "fwd"
                ref = torch.nn.LayerNorm(hidden).to(device, s.dtype)
                with torch.no_grad():  # not the identity: a wrong affine step must show
                    ref.weight.uniform_(0.5, 1.5)
                    ref.bias.uniform_(-0.5, 0.5)
                x = _randn((s.layernorm_rows, hidden), s.dtype, device, grad)
                return dict(x=x, mode=mode, reference=ref,
                            dout=_randn(x.shape, s.dtype, device, False) if grad else None)
            elem = torch.empty((), dtype=s.dtype).element_size()
            cases.append(Case(
                family="layernorm", workload=f"layernorm {mode}", mode=mode,
                label=f"rows={s.layernorm_rows} hidden={hidden}",
                params=dict(rows=s.layernorm_rows, hidden=hidden,
                            dtype=str(s.dtype).replace("torch.", "")),
                sweep="hidden", panel=f"layernorm {mode}",
                work=F.layernorm_bytes(s.layernorm_rows, hidden, elem, mode=mode), unit="byte",
                providers=LAYERNORM_PROVIDERS, build=build, provider_fn=P.layernorm_provider,
                priority=0 if hidden <= 1024 else 1))
    return cases


def _feedforward_cases(s: Sizes, device: torch.device) -> List[Case]:
    cases = []
    for mode in MODES:
        def build(mode=mode):
            grad = mode != "fwd"
            ref = torch.nn.Sequential(torch.nn.Linear(HIDDEN, FORWARD_EXPANSION * HIDDEN),
                                      torch.nn.ReLU(),
                                      torch.nn.Linear(FORWARD_EXPANSION * HIDDEN, HIDDEN))
            x = _randn((s.feedforward_tokens, HIDDEN), s.dtype, device, grad)
            return dict(x=x, mode=mode, reference=ref.to(device, s.dtype), embed=HIDDEN,
                        expansion=FORWARD_EXPANSION,
                        dout=_randn(x.shape, s.dtype, device, False) if grad else None)
        cases.append(Case(
            family="feedforward", workload=f"feed-forward {mode}", mode=mode,
            label=f"tokens={s.feedforward_tokens} {HIDDEN}->{FORWARD_EXPANSION * HIDDEN}->{HIDDEN}",
            params=dict(tokens=s.feedforward_tokens, embed=HIDDEN,
                        hidden=FORWARD_EXPANSION * HIDDEN,
                        dtype=str(s.dtype).replace("torch.", "")),
            sweep="tokens", panel=f"feed-forward {mode}",
            work=F.feedforward_flops(s.feedforward_tokens, HIDDEN, FORWARD_EXPANSION * HIDDEN,
                                     mode=mode),
            unit="flop", providers=FEEDFORWARD_PROVIDERS, build=build,
            provider_fn=P.feedforward_provider))
    return cases


def _encoder_cases(s: Sizes, device: torch.device) -> List[Case]:
    heads, batch, length, layers = HIDDEN // 64, s.encoder_batch, s.encoder_length, s.encoder_layers
    config = (s.vocab, HIDDEN, layers, heads, FORWARD_EXPANSION, 0.0, length)
    cases = []
    for mode in MODES:
        for padded in (True, False):
            lengths = padded_lengths(batch, length) if padded else [length] * batch

            def build(mode=mode, lengths=lengths, padded=padded):
                torch.manual_seed(0)
                ref = reference.BertEncoder(*config).to(device, s.dtype)
                tokens = torch.randint(0, s.vocab, (batch, length), device=device)
                keep = _keep_from_lengths(lengths, length, device) if padded else None
                mask = None if keep is None else keep[:, None, None, :]
                dout = None if mode == "fwd" else _randn((batch, length, HIDDEN), s.dtype,
                                                         device, False)
                if dout is not None and keep is not None:  # a loss over real tokens only
                    dout = dout * keep[:, :, None]
                return dict(tokens=tokens, keep=keep, mask=mask, mode=mode, reference=ref,
                            heads=heads, config=config, dtype=s.dtype, dout=dout)
            title = "forward" if mode == "fwd" else "training step (fwd+bwd, no optimizer)"
            cases.append(Case(
                family="encoder", workload=f"BERT-base encoder {title}", mode=mode,
                label=f"B={batch} L={length} layers={layers} "
                      f"{'padded (mean 0.6 L)' if padded else 'no padding'}",
                params=dict(batch=batch, length=length, layers=layers, padded=padded,
                            vocab=s.vocab, real_tokens=sum(lengths),
                            dtype=str(s.dtype).replace("torch.", "")),
                sweep="length", panel=f"encoder {mode}, {'padded' if padded else 'full'}",
                work=F.encoder_flops(lengths, HIDDEN, heads, FORWARD_EXPANSION, layers,
                                     mode=mode),
                unit="flop", providers=ENCODER_PROVIDERS, build=build,
                provider_fn=P.encoder_provider, torch_peer="torch-encoder",
                valid_rows=_encoder_rows))
    return cases


def _padding_sweep_cases(s: Sizes, device: torch.device) -> List[Case]:
    """Encoder forward at 0 / 25 / 50 / 75 % padding: fastattn's packed path (the default for a
    key-padding mask) against its padded path, the eager reference and nn.TransformerEncoder
    with nested tensors."""
    heads, batch, length, layers = HIDDEN // 64, s.encoder_batch, s.encoder_length, s.encoder_layers
    config = (s.vocab, HIDDEN, layers, heads, FORWARD_EXPANSION, 0.0, length)
    cases = []
    for ratio in PADDING_RATIOS:
        lengths = [max(1, round(length * (1.0 - ratio)))] * batch

        def build(lengths=lengths):
            torch.manual_seed(0)
            ref = reference.BertEncoder(*config).to(device, s.dtype)
            tokens = torch.randint(0, s.vocab, (batch, length), device=device)
            keep = _keep_from_lengths(lengths, length, device)
            return dict(tokens=tokens, keep=keep, mask=keep[:, None, None, :], mode="fwd",
                        reference=ref, heads=heads, config=config, dtype=s.dtype, dout=None)
        cases.append(Case(
            family="encoder", workload="BERT-base encoder forward, padding sweep", mode="fwd",
            label=f"B={batch} L={length} layers={layers} padding={ratio:.0%}",
            params=dict(batch=batch, length=length, layers=layers, padding=ratio,
                        real_tokens=sum(lengths), dtype=str(s.dtype).replace("torch.", "")),
            sweep="padding", panel="encoder fwd, padding sweep",
            work=F.encoder_flops(lengths, HIDDEN, heads, FORWARD_EXPANSION, layers, mode="fwd"),
            unit="flop", providers=ENCODER_PROVIDERS, build=build,
            provider_fn=P.encoder_provider, torch_peer="torch-encoder",
            valid_rows=_encoder_rows, priority=1))
    return cases


def _encoder_rows(state):
    """Real tokens of the forward output; a training step compares the embedding gradient."""
    if state["keep"] is None or state["mode"] != "fwd":
        return None
    return state["keep"][:, :, None]


def _hf_cases(s: Sizes, device: torch.device) -> List[Case]:
    """Hugging Face BertModel (no pooler, dropout 0 so that outputs compare), inference
    forward (eval) and a training step (train mode, fwd+bwd), padded (mean 0.6 L) and full."""
    cases = []
    for model, batch, length, layers_override in s.hf_runs:
        title, layers, hidden, heads, inter = HF_MODELS[model]
        layers = layers_override or layers
        config = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                      intermediate_size=inter, vocab_size=s.vocab,
                      max_position_embeddings=max(512, length),
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        for mode in MODES:
            for padded in (True, False):
                lengths = padded_lengths(batch, length) if padded else [length] * batch

                def build(mode=mode, lengths=lengths, config=config, batch=batch,
                          length=length):
                    keep = _keep_from_lengths(lengths, length, device)
                    dout = None if mode == "fwd" else (
                        _randn((batch, length, config["hidden_size"]), s.dtype, device, False)
                        * keep[:, :, None])  # a loss over real tokens only
                    return dict(config=config, mode=mode, dtype=s.dtype, device=device,
                                tokens=torch.randint(1, s.vocab, (batch, length), device=device),
                                attention_mask=keep.long(), keep=keep, dout=dout)
                step = "forward (eval)" if mode == "fwd" else "training step (fwd+bwd)"
                cases.append(Case(
                    family="hf", workload=f"HF BertModel {title} {step}", mode=mode,
                    label=f"B={batch} L={length} layers={layers} "
                          f"{'padded (mean 0.6 L)' if padded else 'no padding'}",
                    params=dict(model=model, batch=batch, length=length, layers=layers,
                                hidden=hidden, padded=padded, real_tokens=sum(lengths),
                                dtype=str(s.dtype).replace("torch.", "")),
                    sweep="length", panel=f"{model} {mode}, {'padded' if padded else 'full'}",
                    work=F.encoder_flops(lengths, hidden, heads, inter // hidden, layers,
                                         mode=mode),
                    unit="flop", providers=HF_PROVIDERS, build=build,
                    provider_fn=P.hf_provider, torch_peer="sdpa", valid_rows=_hf_rows,
                    priority=1))
    return cases


def _hf_rows(state):
    """Real tokens of last_hidden_state; a training step compares the embedding gradient."""
    return state["keep"][:, :, None] if state["mode"] == "fwd" else None


_BUILDERS = {"attention": _attention_cases, "layernorm": _layernorm_cases,
             "feedforward": _feedforward_cases, "hf": _hf_cases,
             "encoder": lambda s, d: _encoder_cases(s, d) + _padding_sweep_cases(s, d)}


def build_cases(device: torch.device, *, quick: bool = False,
                only: Optional[Sequence[str]] = None,
                max_priority: Optional[int] = None) -> List[Case]:
    """Every case for ``device`` in report order; ``only``: families to keep (None: all);
    ``max_priority``: only cases whose priority is at most this (0: the BERT priority cases)."""
    only = list(FAMILIES if only is None else only)
    unknown = [f for f in only if f not in FAMILIES]
    if unknown or not only:
        raise ValueError(f"only must name families among {FAMILIES}, got {only}")
    sizes = sizes_for(device, quick)
    return [case for family in FAMILIES if family in only
            for case in _BUILDERS[family](sizes, device)
            if max_priority is None or case.priority <= max_priority]
