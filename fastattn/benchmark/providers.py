"""What each provider runs: one factory per (family, provider), returning a ready :class:`Run`.

A factory raises :class:`NotApplicable` with the reason when its provider cannot run a case
(not installed, no kernel for this mask / dtype / device, not in this build); the harness reports
that as an "n/a" row, never as an error.  Optional libraries (flash-attn, xformers,
Liger-Kernel) and fastattn modules still being written are imported here, lazily.
"""
from __future__ import annotations

import dataclasses
import importlib
import warnings
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

import fastattn
from fastattn.backends import resolve_backend
from fastattn.reference import attention_reference


class NotApplicable(Exception):
    """This provider cannot run this case; ``str(exc)`` says why."""


@dataclasses.dataclass
class Run:
    """``fn()`` is what gets timed; ``backend`` says which implementation ran; ``output`` maps
    ``fn()``'s result to the tensor compared against the eager reference (None: not compared)."""
    fn: Callable[[], Any]
    backend: str
    output: Optional[Callable[[Any], torch.Tensor]] = lambda r: r if torch.is_tensor(r) else r[0]


def optional_module(name: str):
    """Import ``name`` or raise NotApplicable("<name> is not installed")."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a broken install raising anything else
        raise NotApplicable(f"{name} is not installed ({type(exc).__name__})") from None


def fastattn_module(attr: str, module: str):
    """fastattn.<attr> (or fastattn.modules.<module>.<attr>), or NotApplicable when missing."""
    cls = getattr(fastattn, attr, None)
    if cls is None:
        try:
            cls = getattr(importlib.import_module(f"fastattn.modules.{module}"), attr)
        except (ImportError, AttributeError) as exc:
            raise NotApplicable(f"fastattn.{attr} is not available in this build "
                                f"({type(exc).__name__}: {exc})") from None
    return cls


def fastattn_backend(device: torch.device) -> str:
    return resolve_backend("auto", device)


def grad_fn(forward: Callable[[], torch.Tensor], inputs, dout: torch.Tensor):
    """Forward + backward: ``forward()`` then the gradients of ``inputs`` (no accumulation)."""
    def fn():
        return torch.autograd.grad(forward(), inputs, dout)
    return fn


def no_grad_fn(forward: Callable[[], Any]):
    def fn():
        with torch.no_grad():
            return forward()
    return fn


def timed_fn(forward, mode: str, inputs, dout):
    return no_grad_fn(forward) if mode == "fwd" else grad_fn(forward, inputs, dout)


# ---- attention (functional): q, k, v (B, H, L, D) -----------------------------------------

SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-math": "MATH",
}
CPU_SDPA_BACKENDS = ("FLASH_ATTENTION", "MATH")


def _sdpa_choice(q, k, v, mask, causal, dropout_p: float = 0.0) -> str:
    """Which backend torch's default dispatch picks (a private query: 'auto' if it fails)."""
    try:
        from torch.nn.attention import SDPBackend
        return "auto: " + SDPBackend(torch._fused_sdp_choice(q, k, v, mask, dropout_p, causal)).name
    except Exception:
        return "auto"


def _probe(fn: Callable[[], Any], what: str) -> None:
    """Run ``fn`` once; a RuntimeError becomes NotApplicable with torch's warnings as reason."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        except RuntimeError as exc:
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            why = [str(w.message).split("\n")[0] for w in caught] or [str(exc).split(". ")[0]]
            raise NotApplicable(f"{what}: " + "; ".join(dict.fromkeys(why))) from None


def attention_provider(name: str, s: dict) -> Run:
    """``s``: q, k, v (B, H, L, D); mask (B, L) key padding / (B, 1, L, L) bool or None;
    sdpa_mask (bool, True = attend) or None; causal; mode; dout; lengths; device; dropout
    (attention dropout rate, 0.0 for none)."""
    q, k, v, causal, mode, dout = s["q"], s["k"], s["v"], s["causal"], s["mode"], s["dout"]
    p = s.get("dropout", 0.0)
    device = q.device
    if name == "fastattn":
        fwd = lambda: fastattn.attention(q, k, v, s["mask"], causal=causal, dropout_p=p,
                                         backend="auto")
        return Run(timed_fn(fwd, mode, (q, k, v), dout), fastattn_backend(device))
    if name == "eager":
        def fwd():  # the dropout mask is drawn and stored, as eager code does
            keep = None if not p else torch.rand(*q.shape[:3], k.shape[2], device=device) >= p
            return attention_reference(q, k, v, s["mask"], causal=causal, dropout_mask=keep,
                                       dropout_p=p)
        return Run(timed_fn(fwd, mode, (q, k, v), dout), "torch (scores materialized)")
    if name == "sdpa" or name in SDPA_BACKENDS:
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, s["sdpa_mask"], dropout_p=p,
                                                     is_causal=causal)
        if name == "sdpa":
            return Run(timed_fn(fwd, mode, (q, k, v), dout),
                       _sdpa_choice(q, k, v, s["sdpa_mask"], causal, p))
        return _sdpa_backend_run(SDPA_BACKENDS[name], fwd, mode, (q, k, v), dout, device)
    if name == "flash-attn":
        return _flash_attn_run(s)
    if name == "xformers":
        return _xformers_run(s)
    raise ValueError(f"unknown attention provider {name!r}")


def _sdpa_backend_run(backend: str, fwd, mode, inputs, dout, device) -> Run:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type == "cpu" and backend not in CPU_SDPA_BACKENDS:
        raise NotApplicable(f"torch has no CPU kernel for SDPBackend.{backend}")
    if not hasattr(SDPBackend, backend):
        raise NotApplicable(f"SDPBackend.{backend} does not exist in torch {torch.__version__}")
    chosen = [getattr(SDPBackend, backend)]
    inner = timed_fn(fwd, mode, inputs, dout)

    def fn():
        with sdpa_kernel(chosen):
            return inner()
    _probe(fn, f"SDPBackend.{backend} rejects this case")
    return Run(fn, f"sdpa {backend}")


def _flash_attn_run(s: dict) -> Run:
    q, k, v, mode, dout = s["q"], s["k"], s["v"], s["mode"], s["dout"]
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        raise NotApplicable("flash-attn runs on CUDA fp16/bf16 tensors only")
    if s["mask_kind"] == "boolean":
        raise NotApplicable("flash-attn takes no arbitrary mask (causal / varlen only)")
    fa = optional_module("flash_attn")
    blhd = [t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad)
            for t in (q, k, v)]
    dout_blhd = None if dout is None else dout.transpose(1, 2).contiguous()
    if s["mask_kind"] != "key-padding":
        fwd = lambda: fa.flash_attn_func(*blhd, causal=s["causal"])
        to_bhld = lambda r: (r if torch.is_tensor(r) else r[0]).transpose(1, 2)
        return Run(timed_fn(fwd, mode, blhd, dout_blhd), f"flash-attn {fa.__version__}", to_bhld)
    keep = s["mask"].bool()                                   # (B, L)
    lengths = keep.sum(1, dtype=torch.int32)
    cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    longest = int(lengths.max())
    packed = [t[keep].detach().requires_grad_(t.requires_grad) for t in blhd]  # (total, H, D)
    dout_packed = None if dout_blhd is None else dout_blhd[keep]
    fwd = lambda: fa.flash_attn_varlen_func(*packed, cu, cu, longest, longest)

    def to_bhld(r):
        flat = r if torch.is_tensor(r) else r[0]
        full = flat.new_zeros(blhd[0].shape)
        full[keep] = flat
        return full.transpose(1, 2)
    return Run(timed_fn(fwd, mode, packed, dout_packed), f"flash-attn {fa.__version__} varlen",
               to_bhld)


def _xformers_run(s: dict) -> Run:
    q, k, v, mode, dout = s["q"], s["k"], s["v"], s["mode"], s["dout"]
    if q.device.type != "cuda":
        raise NotApplicable("xformers' memory-efficient attention runs on CUDA only")
    if s["mask_kind"] in ("key-padding", "boolean"):
        raise NotApplicable("xformers is run here without mask tensors (none and causal only)")
    xops = optional_module("xformers.ops")
    blhd = [t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad)
            for t in (q, k, v)]
    bias = xops.LowerTriangularMask() if s["causal"] else None
    fwd = lambda: xops.memory_efficient_attention(*blhd, attn_bias=bias)
    dout_blhd = None if dout is None else dout.transpose(1, 2).contiguous()
    to_bhld = lambda r: (r if torch.is_tensor(r) else r[0]).transpose(1, 2)
    return Run(timed_fn(fwd, mode, blhd, dout_blhd), "xformers memory_efficient_attention",
               to_bhld)


# ---- self-attention module: x (B, L, E) -----------------------------------------------------

def self_attention_provider(name: str, s: dict) -> Run:
    """``s``: x (B, L, E), mask (B, L) keep or None, heads, mode, dout, reference module."""
    x, mask, mode, dout, ref = s["x"], s["mask"], s["mode"], s["dout"], s["reference"]
    if name == "eager":
        fwd = lambda: ref(x, x, x, mask)
        return Run(timed_fn(fwd, mode, (x,), dout), "torch (fastattn.reference.SelfAttention)")
    if name == "fastattn":
        mod = fastattn.SelfAttention(ref.embed_size, ref.heads).to(x.device, x.dtype)
        mod.load_state_dict(ref.state_dict())
        fwd = lambda: mod(x, x, x, mask)
        return Run(timed_fn(fwd, mode, (x,), dout), fastattn_backend(x.device))
    if name == "torch-mha":
        mha = torch.nn.MultiheadAttention(ref.embed_size, ref.heads, batch_first=True)
        mha = mha.to(x.device, x.dtype).eval()
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([ref.queries.weight, ref.keys.weight,
                                                ref.values.weight]))
            mha.in_proj_bias.copy_(torch.cat([ref.queries.bias, ref.keys.bias, ref.values.bias]))
            mha.out_proj.weight.copy_(ref.fc_out.weight)
            mha.out_proj.bias.copy_(ref.fc_out.bias)
        pad = None if mask is None else ~mask.bool()
        fwd = lambda: mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        label = "nn.MultiheadAttention" + (" (eval, no_grad: fast path)" if mode == "fwd" else "")
        return Run(timed_fn(fwd, mode, (x,), dout), label)
    raise ValueError(f"unknown self-attention provider {name!r}")


# ---- LayerNorm and feed-forward: x (rows, hidden) -------------------------------------------

def layernorm_provider(name: str, s: dict) -> Run:
    x, mode, dout, ref = s["x"], s["mode"], s["dout"], s["reference"]
    hidden = x.shape[-1]
    if name == "eager":
        mod, backend = ref, "torch.nn.LayerNorm"
    elif name == "fastattn":
        mod = fastattn_module("LayerNorm", "layer_norm")(hidden).to(x.device, x.dtype)
        mod.load_state_dict(ref.state_dict())
        backend = fastattn_backend(x.device)
    elif name == "liger":
        if x.device.type != "cuda":
            raise NotApplicable("Liger-Kernel runs on CUDA only")
        liger = optional_module("liger_kernel.transformers")
        mod = liger.LigerLayerNorm(hidden, eps=ref.eps).to(x.device, x.dtype)
        with torch.no_grad():
            mod.weight.copy_(ref.weight)
            mod.bias.copy_(ref.bias)
        backend = "Liger-Kernel LigerLayerNorm"
    else:
        raise ValueError(f"unknown layernorm provider {name!r}")
    inputs = (x, *mod.parameters())
    return Run(timed_fn(lambda: mod(x), mode, inputs, dout), backend)


def feedforward_provider(name: str, s: dict) -> Run:
    """eager: torch's Linear, ReLU, Linear; fastattn: FeedForward under "auto" (per GEMM the
    tuned choice, cuBLAS(Lt) without a tuned table); fastattn-triton: always the Triton
    epilogue GEMMs; cublas-epilogue: always cuBLAS(Lt) with its fused epilogue and torch's
    elementwise ops for the rest."""
    x, mode, dout, ref = s["x"], s["mode"], s["dout"], s["reference"]
    forced = None
    if name == "eager":
        mod, backend = ref, "torch (Linear, ReLU, Linear)"
        output = Run.output
    elif name in ("fastattn", "fastattn-triton", "cublas-epilogue"):
        if name != "fastattn" and x.device.type != "cuda":
            raise NotApplicable(f"{name} compares CUDA GEMM paths (CUDA only)")
        cls = fastattn_module("FeedForward", "feedforward")
        mod = cls(s["embed"], s["expansion"], activation="relu",
                  backend="triton" if name == "fastattn-triton" else "auto")
        mod = mod.to(x.device, x.dtype)
        output = Run.output if _share_weights(mod, ref) else None
        backend = fastattn_backend(x.device)
        if name == "fastattn" and backend == "triton":
            backend = "auto: " + _feedforward_choice(x, s, mode)
        elif name == "fastattn-triton":
            backend = "Triton epilogue GEMMs"
        elif name == "cublas-epilogue":
            forced, backend = {"backend": "cublas"}, "cuBLAS(Lt) epilogue + torch elementwise"
    else:
        raise ValueError(f"unknown feedforward provider {name!r}")
    inputs = (x, *mod.parameters())
    fn = timed_fn(lambda: mod(x), mode, inputs, dout)
    if forced is not None:
        fn = _with_matmul_config(fn, _feedforward_keys(x, s, mode), forced)
    return Run(fn, backend, output)


def _feedforward_keys(x, s, mode):
    from fastattn.kernels.matmul_configs import feedforward_cases

    return feedforward_cases(x.shape[0], s["embed"], s["embed"] * s["expansion"],
                             str(x.dtype).replace("torch.", ""), "relu", residual=False,
                             training=mode != "fwd")


def _feedforward_choice(x, s, mode) -> str:
    """'cublas' / 'triton' per GEMM, as the dispatch picks them for this case."""
    from fastattn.ops.gemm import choose_backend

    picks = {name: choose_backend(x.device, key)[0]
             for name, key in _feedforward_keys(x, s, mode).items()}
    return ", ".join(f"{k} {v}" for k, v in picks.items())


def _with_matmul_config(fn, keys, config):
    """``fn`` run with ``config`` forced for every GEMM case in ``keys`` (tuning.override)."""
    import contextlib

    from fastattn import tuning

    def run():
        with contextlib.ExitStack() as stack:
            for key in keys.values():
                stack.enter_context(tuning.override("matmul", key, config))
            return fn()
    return run


def _share_weights(dst: torch.nn.Module, src: torch.nn.Module) -> bool:
    """Give ``dst`` the weights of ``src``: by state dict, else parameter by parameter in order
    when the shapes match one to one.  False when neither fits (outputs are then not compared)."""
    try:
        dst.load_state_dict(src.state_dict())
        return True
    except (RuntimeError, KeyError):
        pass
    a, b = list(dst.parameters()), list(src.parameters())
    if len(a) != len(b) or any(p.shape != r.shape for p, r in zip(a, b)):
        return False
    with torch.no_grad():
        for p, r in zip(a, b):
            p.copy_(r)
    return True


# ---- the whole encoder: token ids (B, L) ----------------------------------------------------

class TorchEncoder(torch.nn.Module):
    """Embeddings + ``nn.TransformerEncoder`` (post-LN, ReLU), weights copied from a
    :class:`fastattn.reference.BertEncoder`: the same function through torch's own stack."""

    def __init__(self, ref: torch.nn.Module, heads: int):
        super().__init__()
        e = ref.embed_size
        ffn = ref.layers[0].feedforward[0].out_features
        self.embeddings, self.pos_embeddings = ref.embeddings, ref.pos_embeddings
        layer = torch.nn.TransformerEncoderLayer(e, heads, ffn, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, ref.num_layers,
                                                   enable_nested_tensor=True)
        p = next(ref.parameters())
        self.encoder.to(p.device, p.dtype)
        with torch.no_grad():
            for mine, theirs in zip(self.encoder.layers, ref.layers):
                a = theirs.attention
                mine.self_attn.in_proj_weight.copy_(
                    torch.cat([a.queries.weight, a.keys.weight, a.values.weight]))
                mine.self_attn.in_proj_bias.copy_(
                    torch.cat([a.queries.bias, a.keys.bias, a.values.bias]))
                mine.self_attn.out_proj.load_state_dict(a.fc_out.state_dict())
                mine.linear1.load_state_dict(theirs.feedforward[0].state_dict())
                mine.linear2.load_state_dict(theirs.feedforward[2].state_dict())
                mine.norm1.load_state_dict(theirs.norm1.state_dict())
                mine.norm2.load_state_dict(theirs.norm2.state_dict())

    def forward(self, tokens, padding):
        """tokens (B, L) ids; padding (B, L) bool, True at padded positions, or None."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embeddings(tokens) + self.pos_embeddings(positions)
        return self.encoder(x, src_key_padding_mask=padding)


def encoder_provider(name: str, s: dict) -> Run:
    """``s``: tokens (B, L), keep (B, L) bool or None, mask (B, 1, 1, L) or None, heads, mode,
    dout (B, L, E), reference (a fastattn.reference.BertEncoder)."""
    tokens, mode, dout, ref, heads = s["tokens"], s["mode"], s["dout"], s["reference"], s["heads"]
    output = Run.output
    if name == "eager":
        mod, backend = ref, "torch (fastattn.reference.BertEncoder)"
        fwd = lambda: mod(tokens, s["mask"])
    elif name in ("fastattn", "fastattn-padded"):
        cls = fastattn_module("BertEncoder", "encoder")
        packed = name == "fastattn"
        mod = cls(*s["config"], unpad=packed).to(tokens.device, s["dtype"])
        output = Run.output if _share_weights(mod, ref) else None
        backend = fastattn_backend(tokens.device)  # "fastattn": packed tokens, else padded
        fwd = lambda: mod(tokens, s["mask"])
    elif name == "torch-encoder":
        mod = TorchEncoder(ref, heads)
        pad = None if s["keep"] is None else ~s["keep"]
        fwd = lambda: mod(tokens, pad)
        if mode == "fwd":
            mod.eval()
            backend = "nn.TransformerEncoder (eval, no_grad, nested tensor: fast path)"
        else:
            backend = "nn.TransformerEncoder (training: no fast path)"
    else:
        raise ValueError(f"unknown encoder provider {name!r}")
    embedding = getattr(getattr(mod, "embeddings", None), "weight", None)
    if embedding is None:  # the gradient compared with the reference's is the embedding's
        embedding, output = next(mod.parameters()), None
    params = [embedding] + [p for p in mod.parameters() if p is not embedding]
    return Run(timed_fn(fwd, mode, params, dout), backend, output)


# ---- Hugging Face BertModel: token ids (B, L) + attention_mask (B, L) --------------------------

def hf_provider(name: str, s: dict) -> Run:
    """``s``: config (BertConfig keywords), tokens, attention_mask (B, L), mode, dtype, device,
    dout (B, L, E) over real tokens.  Every provider builds the same seeded weights."""
    transformers = optional_module("transformers")
    impl = {"eager": "eager", "sdpa": "sdpa", "fastattn-attn": "fastattn",
            "fastattn-optimize": "sdpa"}.get(name)
    if impl is None:
        raise ValueError(f"unknown hf provider {name!r}")
    torch.manual_seed(0)
    config = transformers.BertConfig(**s["config"], attn_implementation="eager")
    model = transformers.BertModel(config, add_pooling_layer=False)
    model = model.to(s["device"], s["dtype"]).train(s["mode"] != "fwd")
    backend = f"transformers {transformers.__version__}, attn_implementation={impl!r}"
    if name == "fastattn-attn":
        import fastattn.integrations.transformers as hf

        if not hf._uses_attention_interface(model):
            raise NotApplicable(f"transformers {transformers.__version__}: BERT has no "
                                "AttentionInterface (fastattn.optimize swaps modules there)")
        model.set_attn_implementation("fastattn")
        backend += f" ({fastattn_backend(s['device'])})"
    elif name == "fastattn-optimize":
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("sdpa")
        fastattn.optimize(model)
        backend = (f"fastattn.optimize ({fastattn_backend(s['device'])}, padding-free), "
                   f"transformers {transformers.__version__}")
    elif hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl  # transformers 4.x: read at forward time
    tokens, mask = s["tokens"], s["attention_mask"]
    fwd = lambda: model(input_ids=tokens, attention_mask=mask).last_hidden_state
    embedding = model.embeddings.word_embeddings.weight
    params = [embedding] + [p for p in model.parameters() if p is not embedding]
    return Run(timed_fn(fwd, s["mode"], params, s["dout"]), backend)
