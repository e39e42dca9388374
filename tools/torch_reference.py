"""An independent PyTorch model of GPSD, for checking gpsdrec's losses and gradients.

It reads a file in the shared/golden format (an official golden file, or a gpsdrec dump written by
build/parity_dump): the configuration from its metadata, the weights from param.*, the batch and
the sampled negatives from input.*; it computes the three losses, the rank outputs and the
gradient of the weighted loss for every parameter.

The model follows the conventions spelled out in shared/golden/README.md (written from the
official chqiwang/gpsd-rec model; this code is ours):
- S+1 positions: the history, then the target at position n = historical_len (padding moves one to
  the right); segment id 1 at position n; input = item_emb + cate_emb + segment_emb (id 0 pads).
- embedding_dim != dim: in = Linear(RMSNorm_1e-6(x)); the item and category heads see
  RMSNorm_1e-6(Linear(h)); the rank head sees h before that projector.
- RMSNorm in fp32: x * rsqrt(mean(x^2) + eps) * w, eps = norm_eps except the two projector norms.
- RoPE on q and k, rotating adjacent pairs (2i, 2i+1) by pos * theta^(-2i/head_dim); the angles are
  computed in fp32 as the official precompute does (inv_freq = 1 / theta ** (arange(0, d, 2) / d),
  angle = outer(pos, inv_freq)), positions from 0.
- softmax(q k^T / sqrt(head_dim)): causal over all S+1 positions, or bidirectional over keys 0..n.
- SwiGLU FFN w2(silu(w1 x) * w3 x); no biases in blocks; final RMSNorm.
- item loss: sampled softmax against each sequence's negatives, shared by its positions; hidden
  state and embeddings L2-normalised (norm clamped at 1e-6); a negative equal to the position's label
  gets -1e6 before the division by the temperature; label in slot 0; mean over labelled positions.
  Negative ids index like PyTorch (-V..-1 from the end); the accidental-hit test compares ids as
  given.
- category loss: full softmax against all category embeddings, same normalisation and temperature.
- rank loss: Linear(d, 4d) + ReLU + Linear(4d, 1) on position n, BCE with logits over samples whose
  click label is 0 or 1; rank outputs are sigmoid(logit) for every sample (zeros without rank loss).
- loss = w_item * item + w_cate * cate + w_rank * rank. A head with zero weight is not computed.
  Where nothing is labelled a loss is 0 (the official model would give NaN); and the official
  model computes the category loss only when the item weight is non-zero, which never matters
  for its stages (pretrain: both weights 1; finetune: both 0).

Precision: "fp32" (default), "bf16" (torch.autocast to bfloat16 around the whole forward, as the
official training runs use; parameters and gradients stay fp32), or "fp64" (everything in float64
except the fp32 RoPE angle computation, which is part of the convention).

Use as a library (load_case, reference) or through tools/parity.py.
"""

import json
import math
import struct

import torch
import torch.nn.functional as F

INPUT_NAMES = (
    "historical_item_ids", "historical_cate_ids", "historical_len", "target_item_id", "target_cate_id",
    "click_label", "item_ar_labels", "cate_ar_labels", "negatives",
)
EXPECT_NAMES = ("loss", "item_ar_loss", "cate_ar_loss", "rank_loss", "rank_outputs")
IGNORE = -100


_DTYPES = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "F16": torch.float16,
           "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path):
    """(metadata, {name: tensor}) of a safetensors file. A small reader of our own, so the
    reference needs torch alone (the GPU machine has no `safetensors` package to rely on)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (hlen,) = struct.unpack("<Q", data[:8])
    if 8 + hlen > len(data):
        raise ValueError(f"{path}: header length {hlen} runs past the end of the file")
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + hlen:]
    tensors = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = [int(d) for d in info["shape"]]
        numel = math.prod(shape)
        if not 0 <= begin <= end <= len(body) or end - begin != numel * torch.empty((), dtype=dtype).element_size():
            raise ValueError(f"{path}: tensor {name} has bad data offsets {begin}..{end}")
        raw = bytearray(body[begin:end])  # a writable copy; torch.frombuffer shares it
        t = torch.frombuffer(raw, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape)
    return meta, tensors


class Case:
    """One golden-format file: metadata, params, grads (as stored), inputs, expectations."""

    def __init__(self, path):
        self.path = path
        self.params, self.grads, self.inputs, self.expect = {}, {}, {}, {}
        meta, tensors = read_safetensors(path)
        self.meta = dict(meta)
        for key, t in tensors.items():
            kind, _, name = key.partition(".")
            if kind == "param":
                self.params[name] = t
            elif kind == "grad":
                self.grads[name] = t
            elif kind == "input":
                self.inputs[name] = t
            elif kind == "expect":
                self.expect[name] = t
        missing = [n for n in INPUT_NAMES if n not in self.inputs] + [n for n in EXPECT_NAMES if n not in self.expect]
        if missing:
            raise ValueError(f"{path}: missing tensors {', '.join(missing)}")
        self.cfg = Config(self.meta, path)
        for name in self.params:
            if name not in self.grads:
                raise ValueError(f"{path}: param.{name} has no grad.{name}")

    def list_meta(self, key):
        v = self.meta.get(key, "")
        return [s for s in v.split(",") if s]


class Config:
    """The model configuration from a file's metadata (the golden files' keys)."""

    def __init__(self, meta, path="?"):
        def get(key, conv):
            if key not in meta:
                raise ValueError(f"{path}: metadata key {key} missing")
            try:
                return conv(meta[key])
            except ValueError:
                raise ValueError(f"{path}: metadata {key} = {meta[key]!r} is not valid") from None

        def boolean(v):
            if v not in ("True", "False"):
                raise ValueError(v)
            return v == "True"

        self.dim = get("dim", int)
        self.n_layers = get("n_layers", int)
        self.n_heads = get("n_heads", int)
        self.emb_dim = get("embedding_dim", int) or self.dim
        self.causal = get("causal", boolean)
        self.n_items = get("item_vocab_size", int)
        self.n_cates = get("cate_vocab_size", int)
        self.max_history = get("max_history", int)
        self.n_samples = get("n_samples", int)
        self.temperature = get("temperature", float)
        self.l2_norm = get("l2_norm", boolean)
        self.norm_eps = get("norm_eps", float)
        self.multiple_of = get("multiple_of", int)
        self.rope_theta = get("rope_theta", float)
        self.w_item = get("item_ar_loss_weight", float)
        self.w_cate = get("cate_ar_loss_weight", float)
        self.w_rank = get("rank_loss_weight", float)
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"{path}: dim {self.dim} / n_heads {self.n_heads} must give an even head size")
        self.head_dim = self.dim // self.n_heads
        self.projected = self.emb_dim != self.dim
        hidden = int(2 * (4 * self.dim) / 3)
        self.ffn_hidden = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


def param_shapes(c):
    """Every parameter of the model, in the official state_dict order, with its shape."""
    D, E, F_ = c.dim, c.emb_dim, c.ffn_hidden
    shapes = {
        "item_embeddings.weight": (c.n_items, E),
        "cate_embeddings.weight": (c.n_cates, E),
        "segment_embeddings.weight": (2, E),
    }
    if c.projected:
        shapes["pre_projector.linear.weight"] = (D, E)
        shapes["pre_projector.pre_norm.weight"] = (E,)
        shapes["post_projector.linear.weight"] = (E, D)
        shapes["post_projector.post_norm.weight"] = (E,)
    for i in range(c.n_layers):
        p = f"layers.{i}."
        for w in ("wq", "wk", "wv", "wo"):
            shapes[p + f"attention.{w}.weight"] = (D, D)
        shapes[p + "feed_forward.w1.weight"] = (F_, D)
        shapes[p + "feed_forward.w2.weight"] = (D, F_)
        shapes[p + "feed_forward.w3.weight"] = (F_, D)
        shapes[p + "attention_norm.weight"] = (D,)
        shapes[p + "ffn_norm.weight"] = (D,)
    shapes["norm.weight"] = (D,)
    shapes["rank_head.w1.weight"] = (4 * D, D)
    shapes["rank_head.w1.bias"] = (4 * D,)
    shapes["rank_head.w2.weight"] = (1, 4 * D)
    shapes["rank_head.w2.bias"] = (1,)
    return shapes


def rms_norm(x, w, eps):
    # At least fp32 whatever the activation type, and back to the input's type, as the official RMSNorm.
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * w).to(x.dtype)


def l2_normalise(x, enabled):
    if not enabled:
        return x
    return x / torch.clamp(torch.linalg.vector_norm(x, dim=-1, keepdim=True), min=1e-6)


def rope_angles(head_dim, n_pos, theta, device):
    """cos and sin [n_pos, head_dim/2] of the interleaved rotary embedding, angles in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(n_pos, device=device).float(), inv_freq)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    """x [B, T, H, hd]: rotate the pairs (2i, 2i+1) of each head by the angle of (position, i)."""
    dt = x.dtype
    xf = x.to(torch.promote_types(dt, torch.float32))
    pairs = xf.reshape(*xf.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    c = cos.to(xf.dtype)[None, :, None, :]
    s = sin.to(xf.dtype)[None, :, None, :]
    out = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1)
    return out.flatten(-2).to(dt)


def gather_rows(table, ids):
    """table[ids] with PyTorch's indexing semantics: ids in [-V, V), negative ones from the end."""
    V = table.shape[0]
    if ids.numel() and (int(ids.min()) < -V or int(ids.max()) >= V):
        raise ValueError(f"ids outside [-{V}, {V}): min {int(ids.min())}, max {int(ids.max())}")
    return table[torch.remainder(ids, V)]


def attention(x, p, c, cos, sin, key_mask, fast=False):
    B, T, _ = x.shape
    H, hd = c.n_heads, c.head_dim
    q = F.linear(x, p["attention.wq.weight"]).view(B, T, H, hd)
    k = F.linear(x, p["attention.wk.weight"]).view(B, T, H, hd)
    v = F.linear(x, p["attention.wv.weight"]).view(B, T, H, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
    if fast:
        if c.causal:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return F.linear(out.transpose(1, 2).reshape(B, T, H * hd), p["attention.wo.weight"])
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(~key_mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, H * hd)
    return F.linear(out, p["attention.wo.weight"])


def feed_forward(x, p):
    return F.linear(F.silu(F.linear(x, p["feed_forward.w1.weight"])) * F.linear(x, p["feed_forward.w3.weight"]),
                    p["feed_forward.w2.weight"])


def forward(c, P, inp, fast=False):
    """The losses and rank outputs for parameters P (name -> tensor) and inputs inp (name -> int64).

    fast=True is the same model written the way the official code runs on a GPU, for timing it
    (tools/torch_bench.py): nn.Embedding lookups (whose backward sums duplicate ids in parallel,
    where indexing's backward adds them one after the other: the 2-row segment table would get
    every token of the batch in two chains), F.scaled_dot_product_attention (fused kernels instead
    of materialised scores), cross_entropy's ignore_index instead of boolean selection, and no id
    checks or other host synchronisations. It expects ids already in [0, V)."""
    hist_item, hist_cate = inp["historical_item_ids"], inp["historical_cate_ids"]
    n = inp["historical_len"]
    B, S = hist_item.shape
    dev = hist_item.device
    if S != c.max_history:
        raise ValueError(f"inputs have {S} history slots, metadata max_history {c.max_history}")
    if not fast and (int(n.min()) < 1 or int(n.max()) > S):
        raise ValueError(f"historical_len outside [1, {S}]")
    gather = (lambda table, ids: F.embedding(ids, table)) if fast else gather_rows
    T = S + 1
    rows = torch.arange(B, device=dev)
    pad = torch.zeros(B, 1, dtype=torch.int64, device=dev)
    items = torch.cat([hist_item, pad], 1)
    cates = torch.cat([hist_cate, pad], 1)
    items[rows, n] = inp["target_item_id"]
    cates[rows, n] = inp["target_cate_id"]
    segments = torch.zeros_like(items)
    segments[rows, n] = 1
    h = (gather(P["item_embeddings.weight"], items) + gather(P["cate_embeddings.weight"], cates) +
         gather(P["segment_embeddings.weight"], segments))
    if c.projected:
        h = F.linear(rms_norm(h, P["pre_projector.pre_norm.weight"], 1e-6), P["pre_projector.linear.weight"])

    pos = torch.arange(T, device=dev)
    if c.causal:
        key_mask = (pos[None, :] <= pos[:, None])[None, None]  # [1, 1, T, T]
    else:
        key_mask = (pos[None, :] <= n[:, None])[:, None, None, :]  # [B, 1, 1, T]: keys 0..n
    cos, sin = rope_angles(c.head_dim, T, c.rope_theta, dev)
    for i in range(c.n_layers):
        p = {k[len(f"layers.{i}."):]: v for k, v in P.items() if k.startswith(f"layers.{i}.")}
        h = h + attention(rms_norm(h, p["attention_norm.weight"], c.norm_eps), p, c, cos, sin, key_mask, fast)
        h = h + feed_forward(rms_norm(h, p["ffn_norm.weight"], c.norm_eps), p)
    h = rms_norm(h, P["norm.weight"], c.norm_eps)
    h_rank = h
    if c.projected:
        h = rms_norm(F.linear(h, P["post_projector.linear.weight"]), P["post_projector.post_norm.weight"], 1e-6)

    zero = torch.zeros((), dtype=torch.float32, device=dev)
    out = {"item_ar_loss": zero, "cate_ar_loss": zero, "rank_loss": zero,
           "rank_outputs": torch.zeros(B, dtype=torch.float32, device=dev)}
    pad_label = torch.full((B, 1), IGNORE, dtype=torch.int64, device=dev)
    if c.w_item > 0:
        labels = torch.cat([inp["item_ar_labels"], pad_label], 1)  # [B, T]
        negs = inp["negatives"]  # [B, N]
        if negs.shape != (B, c.n_samples):
            raise ValueError(f"negatives are {tuple(negs.shape)}, expected ({B}, {c.n_samples})")
        mask = labels != IGNORE
        if fast or bool(mask.any()):
            x = l2_normalise(h, c.l2_norm)  # [B, T, E]
            table = P["item_embeddings.weight"]
            pos_emb = l2_normalise(gather(table, torch.where(mask, labels, 0)), c.l2_norm)
            label_scores = (x * pos_emb).sum(-1, keepdim=True)  # [B, T, 1]
            neg_emb = l2_normalise(gather(table, negs), c.l2_norm)  # [B, N, E]
            noise = torch.einsum("bne,bte->btn", neg_emb, x)  # [B, T, N]
            hits = labels[:, :, None] == negs[:, None, :]
            noise = noise - 1e6 * hits
            scores = torch.cat([label_scores.to(noise.dtype), noise], -1) / c.temperature
            if fast:
                target = torch.where(mask, 0, IGNORE)
                out["item_ar_loss"] = F.cross_entropy(scores.flatten(0, 1).float(), target.flatten(),
                                                      ignore_index=IGNORE)
            else:
                sel = scores[mask].float()
                out["item_ar_loss"] = F.cross_entropy(sel, torch.zeros(sel.shape[0], dtype=torch.int64, device=dev))
    if c.w_cate > 0:
        labels = torch.cat([inp["cate_ar_labels"], pad_label], 1)
        mask = labels != IGNORE
        if fast:
            x = l2_normalise(h, c.l2_norm).flatten(0, 1)  # [B*T, E]
            table = l2_normalise(P["cate_embeddings.weight"], c.l2_norm)
            scores = torch.matmul(x, table.t()) / c.temperature
            out["cate_ar_loss"] = F.cross_entropy(scores.float(), labels.flatten(), ignore_index=IGNORE)
        elif bool(mask.any()):
            x = l2_normalise(h[mask], c.l2_norm)  # [M, E]
            table = l2_normalise(P["cate_embeddings.weight"], c.l2_norm)
            scores = torch.matmul(x, table.t()) / c.temperature
            out["cate_ar_loss"] = F.cross_entropy(scores.float(), labels[mask])
    if c.w_rank > 0:
        hr = h_rank[rows, n]
        z = F.linear(F.relu(F.linear(hr, P["rank_head.w1.weight"], P["rank_head.w1.bias"])),
                     P["rank_head.w2.weight"], P["rank_head.w2.bias"]).squeeze(-1).float()
        out["rank_outputs"] = torch.sigmoid(z)
        click = inp["click_label"]
        m = (click == 0) | (click == 1)
        if fast:  # every benchmark sample has a click label: no selection
            out["rank_loss"] = F.binary_cross_entropy_with_logits(z, click.float())
        elif bool(m.any()):
            out["rank_loss"] = F.binary_cross_entropy_with_logits(z[m], click[m].float())
    out["loss"] = c.w_item * out["item_ar_loss"] + c.w_cate * out["cate_ar_loss"] + c.w_rank * out["rank_loss"]
    return out


def reference(case, precision="fp32", device="cpu"):
    """Run the reference on a Case. Returns (results, grads): results maps loss, item_ar_loss,
    cate_ar_loss, rank_loss to Python floats and rank_outputs to a float64 CPU tensor; grads maps
    every parameter name to its fp64 CPU gradient (zeros where the loss does not reach it)."""
    if precision not in ("fp32", "bf16", "fp64"):
        raise ValueError(f"precision {precision!r}: expected fp32, bf16 or fp64")
    c = case.cfg
    dev = torch.device(device)
    shapes = param_shapes(c)
    if set(shapes) != set(case.params):
        extra = sorted(set(case.params) - set(shapes))
        lacking = sorted(set(shapes) - set(case.params))
        raise ValueError(f"{case.path}: parameters differ from the model's: extra {extra}, missing {lacking}")
    pdtype = torch.float64 if precision == "fp64" else torch.float32
    P = {}
    for name, shape in shapes.items():
        t = case.params[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"{case.path}: param.{name} is {tuple(t.shape)}, expected {shape}")
        P[name] = t.to(device=dev, dtype=pdtype).clone().requires_grad_(True)
    inp = {k: case.inputs[k].to(device=dev, dtype=torch.int64) for k in INPUT_NAMES}
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = forward(c, P, inp)
    loss = out["loss"]
    if loss.requires_grad:
        loss.backward()
    results = {k: float(out[k].detach()) for k in ("loss", "item_ar_loss", "cate_ar_loss", "rank_loss")}
    results["rank_outputs"] = out["rank_outputs"].detach().double().cpu()
    grads = {}
    for name, t in P.items():
        g = t.grad
        grads[name] = torch.zeros(t.shape, dtype=torch.float64) if g is None else g.detach().double().cpu()
    return results, grads
