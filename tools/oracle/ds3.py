"""Independent PyTorch reference ("oracle") for ferry's DeepSeek-V3 model.

Written from the math in docs/DESIGN.md section 2 (and the tensor names of section 3),
not from ferry's C code. Everything here is plain functions over two dicts of
Hugging-Face-named tensors:

    params   name -> leaf tensor with requires_grad (the trainable weights)
    buffers  name -> tensor (the routers' e_score_correction_bias; not trained)

Gradients come from torch.autograd. The default precision is float64; pass
dtype=torch.float32 where a float32 run is wanted (the benchmark).

Contents
    safetensors reader / writer (numpy only)
    Config                  HF DeepseekV3 config.json keys + the "ferry" object
    parameter_shapes(), buffer_shapes(), init_params()
    forward()               main model + MTP modules + losses, router records
    bias_update()           auxiliary-loss-free balancing step
    lr_at(), adamw_param_groups()   the training rules
"""

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------
# safetensors (format: u64 LE header length N, N bytes of JSON, data block)
# ---------------------------------------------------------------------------

_ST_TO_NP = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}
_NP_TO_ST = {np.dtype(v).str[1:]: k for k, v in _ST_TO_NP.items()}


def load_safetensors(path):
    """Read a .safetensors file. Returns (dict name -> np.ndarray, metadata dict).

    BF16 tensors are widened to float32 (exact)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", None) or {}
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        dtype = info["dtype"]
        if not (0 <= begin <= end <= len(data)):
            raise ValueError(f"{path}: tensor {name}: offsets {begin},{end} out of range")
        chunk = data[begin:end]
        if dtype == "BF16":
            u16 = np.frombuffer(chunk, dtype="<u2")
            arr = (u16.astype(np.uint32) << 16).view(np.float32)
        elif dtype in _ST_TO_NP:
            arr = np.frombuffer(chunk, dtype=np.dtype(_ST_TO_NP[dtype]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dtype}")
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: tensor {name}: {arr.size} elements for shape {shape}")
        out[name] = arr.reshape(shape).astype(arr.dtype.newbyteorder("="), copy=True)
    return out, metadata


def save_safetensors(path, tensors, metadata=None):
    """Write dict name -> array-like (numpy or torch) as safetensors, names sorted."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        a = np.ascontiguousarray(a)
        key = a.dtype.str[1:]
        if key not in _NP_TO_ST:
            raise ValueError(f"tensor {name}: unsupported dtype {a.dtype}")
        blob = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _NP_TO_ST[key], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)  # pad so the data block is 8-aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for blob in blobs:
            f.write(blob)


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------

@dataclass
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    q_lora_rank: Optional[int]
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope_theta: float
    rms_norm_eps: float
    # MoE (n_routed_experts == 0 means an all-dense model)
    n_routed_experts: int = 0
    moe_intermediate_size: int = 0
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    n_group: int = 1
    topk_group: int = 1
    first_k_dense_replace: int = 0
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    aux_loss_alpha: float = 0.0
    seq_aux: bool = False
    # multi-token prediction
    num_nextn_predict_layers: int = 0
    # the "ferry" object
    bias_update_speed: float = 0.0   # gamma of the aux-free bias update
    mtp_loss_weight: float = 0.0     # lambda
    # YaRN RoPE scaling (None: plain RoPE); keys as in the config's
    # rope_scaling / rope_parameters object
    yarn: Optional[Dict] = None
    max_position_embeddings: int = 4096
    ferry: Dict = field(default_factory=dict)  # everything else (training settings)

    # --- derived quantities -------------------------------------------------
    @property
    def n_layers_total(self):
        """Main layers plus MTP modules (MTP module k is layer L+k-1)."""
        return self.num_hidden_layers + self.num_nextn_predict_layers

    @property
    def q_head_dim(self):
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, i):
        return self.n_routed_experts > 0 and i >= self.first_k_dense_replace

    @property
    def moe_layers(self):
        return [i for i in range(self.n_layers_total) if self.is_moe_layer(i)]

    @property
    def balance_loss_on(self):
        return bool(self.seq_aux) and self.aux_loss_alpha > 0 and self.n_routed_experts > 0

    # --- loading --------------------------------------------------------------
    @staticmethod
    def from_dict(j):
        """Build from a parsed config.json. Keys the math needs are required
        (a missing key is an error, not a silent default); keys whose absence
        has one obvious meaning (no MTP, no group limit, no balance loss) are
        optional."""
        def need(key):
            if key not in j:
                raise KeyError(f"config.json lacks required key '{key}'")
            return j[key]

        def opt(key, default):
            v = j.get(key, default)
            return default if v is None else v

        rope = j.get("rope_scaling") or j.get("rope_parameters") or {}
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in ("default", "yarn"):
            raise NotImplementedError(f"rope type {rtype} is not modelled by the oracle")
        ferry = dict(j.get("ferry") or {})
        c = Config(
            vocab_size=int(need("vocab_size")),
            hidden_size=int(need("hidden_size")),
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=int(need("num_attention_heads")),
            q_lora_rank=(None if j.get("q_lora_rank") is None else int(j["q_lora_rank"])),
            kv_lora_rank=int(need("kv_lora_rank")),
            qk_nope_head_dim=int(need("qk_nope_head_dim")),
            qk_rope_head_dim=int(need("qk_rope_head_dim")),
            v_head_dim=int(need("v_head_dim")),
            rope_theta=float(rope.get("rope_theta") or need("rope_theta")),
            yarn=dict(rope) if rtype == "yarn" else None,
            max_position_embeddings=int(opt("max_position_embeddings", 4096)),
            rms_norm_eps=float(need("rms_norm_eps")),
            n_routed_experts=int(opt("n_routed_experts", 0)),
            num_nextn_predict_layers=int(opt("num_nextn_predict_layers", 0)),
            aux_loss_alpha=float(opt("aux_loss_alpha", 0.0)),
            seq_aux=bool(opt("seq_aux", False)),
            first_k_dense_replace=int(opt("first_k_dense_replace", 0)),
            ferry=ferry,
        )
        if c.n_routed_experts > 0:
            c.moe_intermediate_size = int(need("moe_intermediate_size"))
            c.num_experts_per_tok = int(need("num_experts_per_tok"))
            c.norm_topk_prob = bool(need("norm_topk_prob"))
            c.routed_scaling_factor = float(need("routed_scaling_factor"))
            c.n_shared_experts = int(opt("n_shared_experts", 0))
            c.n_group = int(opt("n_group", 1))
            c.topk_group = int(opt("topk_group", 1))
            c.bias_update_speed = float(ferry.get("bias_update_speed") or 0.0)
        if c.num_nextn_predict_layers > 0:
            if ferry.get("mtp_loss_weight") is None:
                raise KeyError("config.json has MTP layers but no ferry.mtp_loss_weight")
            c.mtp_loss_weight = float(ferry["mtp_loss_weight"])
        c.validate()
        return c

    @staticmethod
    def load(path):
        with open(path) as f:
            return Config.from_dict(json.load(f))

    def validate(self):
        if self.qk_rope_head_dim % 2:
            raise ValueError("qk_rope_head_dim must be even (RoPE rotates pairs)")
        if self.n_routed_experts > 0:
            E, K, G = self.n_routed_experts, self.num_experts_per_tok, self.n_group
            if not 1 <= K <= E:
                raise ValueError("num_experts_per_tok must be in 1..n_routed_experts")
            if E % G:
                raise ValueError("n_routed_experts must be divisible by n_group")
            if G > 1:
                if not 1 <= self.topk_group <= G:
                    raise ValueError("topk_group must be in 1..n_group")
                if K > self.topk_group * (E // G):
                    raise ValueError("num_experts_per_tok exceeds the experts in the kept groups")

    def train_setting(self, key, default=None):
        """A ferry training setting (lr, min_lr, warmup_steps, ...)."""
        v = self.ferry.get(key, default)
        if v is None and default is None:
            raise KeyError(f"config.json lacks ferry.{key}")
        return v


# ---------------------------------------------------------------------------
# Parameter table (HF DeepseekV3ForCausalLM names; weights are [out, in])
# ---------------------------------------------------------------------------

def parameter_shapes(cfg):
    """Ordered dict name -> shape of every trainable parameter."""
    d, H = cfg.hidden_size, cfg.num_attention_heads
    dq = cfg.q_head_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layers_total):
        p = f"model.layers.{i}."
        if i >= cfg.num_hidden_layers:  # MTP module: its input projection
            shapes[p + "enorm.weight"] = (d,)
            shapes[p + "hnorm.weight"] = (d,)
            shapes[p + "eh_proj.weight"] = (d, 2 * d)
        shapes[p + "input_layernorm.weight"] = (d,)
        a = p + "self_attn."
        if cfg.q_lora_rank is not None:
            shapes[a + "q_a_proj.weight"] = (cfg.q_lora_rank, d)
            shapes[a + "q_a_layernorm.weight"] = (cfg.q_lora_rank,)
            shapes[a + "q_b_proj.weight"] = (H * dq, cfg.q_lora_rank)
        else:
            shapes[a + "q_proj.weight"] = (H * dq, d)
        shapes[a + "kv_a_proj_with_mqa.weight"] = (cfg.kv_lora_rank + cfg.qk_rope_head_dim, d)
        shapes[a + "kv_a_layernorm.weight"] = (cfg.kv_lora_rank,)
        shapes[a + "kv_b_proj.weight"] = (H * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank)
        shapes[a + "o_proj.weight"] = (d, H * cfg.v_head_dim)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        m = p + "mlp."
        if cfg.is_moe_layer(i):
            inter = cfg.moe_intermediate_size
            shapes[m + "gate.weight"] = (cfg.n_routed_experts, d)
            for e in range(cfg.n_routed_experts):
                _swiglu_shapes(shapes, f"{m}experts.{e}.", d, inter)
            if cfg.n_shared_experts > 0:
                _swiglu_shapes(shapes, m + "shared_experts.", d, cfg.n_shared_experts * inter)
        else:
            _swiglu_shapes(shapes, m, d, cfg.intermediate_size)
        if i >= cfg.num_hidden_layers:
            shapes[p + "shared_head.norm.weight"] = (d,)
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def _swiglu_shapes(shapes, prefix, d, inter):
    shapes[prefix + "gate_proj.weight"] = (inter, d)
    shapes[prefix + "up_proj.weight"] = (inter, d)
    shapes[prefix + "down_proj.weight"] = (d, inter)


def bias_name(layer):
    return f"model.layers.{layer}.mlp.gate.e_score_correction_bias"


def buffer_shapes(cfg):
    """The non-trainable buffers: one router bias per MoE layer."""
    return {bias_name(i): (cfg.n_routed_experts,) for i in cfg.moe_layers}


def init_params(cfg, seed=0, std=0.02, dtype=torch.float64, bias_std=0.0):
    """Random init: 2-D weights ~ N(0, std), norm weights = 1, biases ~ N(0, bias_std)."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in parameter_shapes(cfg).items():
        if len(shape) == 1:
            t = torch.ones(shape, dtype=dtype)
        else:
            t = torch.randn(shape, generator=g, dtype=torch.float64).mul_(std).to(dtype)
        params[name] = t.requires_grad_(True)
    buffers = {name: torch.randn(shape, generator=g, dtype=torch.float64).mul_(bias_std).to(dtype)
               for name, shape in buffer_shapes(cfg).items()}
    return params, buffers


def tensors_to_model(cfg, tensors, dtype=torch.float64):
    """Split a dict name -> array (e.g. read from safetensors) into (params, buffers),
    checking that every expected tensor is present with the right shape."""
    params, buffers = {}, {}
    for table, dst, grad in ((parameter_shapes(cfg), params, True),
                             (buffer_shapes(cfg), buffers, False)):
        for name, shape in table.items():
            if name not in tensors:
                raise KeyError(f"missing tensor {name}")
            t = torch.as_tensor(np.asarray(tensors[name])).to(dtype)
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"tensor {name}: shape {tuple(t.shape)}, expected {tuple(shape)}")
            dst[name] = t.clone().requires_grad_(grad)
    return params, buffers


# ---------------------------------------------------------------------------
# LoRA (PEFT's LoRA on nn.Linear): y = W x + (alpha/r) B (A x)
# ---------------------------------------------------------------------------

LORA_TARGETS = ("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
                "gate_proj", "up_proj", "down_proj", "experts")


def lora_targeted(cfg, targets):
    """Base weight names that get an adapter, from PEFT's target_modules rule:
    a module matches when its name's last component is a target. The routed
    experts match only the target "experts" (gate/up/down_proj alone mean the
    dense MLPs and shared experts). Only the main layers: Hugging Face's
    DeepseekV3 model, which PEFT adapts, has no MTP modules."""
    out = []
    for name, shape in parameter_shapes(cfg).items():
        parts = name.split(".")
        if len(shape) != 2 or parts[:2] != ["model", "layers"] or int(parts[2]) >= cfg.num_hidden_layers:
            continue
        module = parts[-2]
        if ".mlp.experts." in name:
            ok = "experts" in targets
        else:
            ok = module in targets and module in LORA_TARGETS
        if ok:
            out.append(name)
    return out


def lora_name(weight, which):
    """PEFT's state-dict name of base weight `weight`'s lora_A / lora_B."""
    return "base_model.model." + weight[:-len(".weight")] + f".lora_{which}.weight"


class LoraParams(dict):
    """The base params (a dict, as everywhere) plus adapters that proj() adds:
    lora maps a base weight name to (A [r, in], B [out, r]); lora_scale = alpha/r.
    Dropout p (0: none) with its key: seed, step, row0 (the batch's first
    token) and streams (base weight name -> its tensor id)."""

    def __init__(self, params, lora, scale, dropout=0.0, seed=0, step=0, row0=0, streams=None):
        super().__init__(params)
        self.lora = lora
        self.lora_scale = scale
        self.lora_dropout = dropout
        self.lora_seed = rng_u64(seed, 0x6C6F7261, step)    # "lora"
        self.lora_row0 = row0
        self.lora_streams = streams or {}


_M64 = (1 << 64) - 1


def _splitmix64(x):
    """SplitMix64's finaliser on uint64 arrays (numpy wraps modulo 2^64)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def rng_u64(seed, stream, counter):
    """ferry's counter-based RNG: splitmix(splitmix(splitmix(seed) ^ stream) ^ counter)."""
    with np.errstate(over="ignore"):
        s = _splitmix64(np.asarray(seed & _M64, dtype=np.uint64)) ^ np.uint64(stream & _M64)
        return _splitmix64(_splitmix64(s) ^ np.asarray(counter, dtype=np.uint64))


def rng_uniform(seed, stream, counter):
    """Uniform in [0, 1) from the top 24 bits (exact in float32)."""
    return (rng_u64(seed, stream, counter) >> np.uint64(40)).astype(np.float64) / 16777216.0


def lora_dropout(params, name, x, tokens=None):
    """Inverted dropout of an adapter's input: element (token k, column j) is
    dropped when uniform(seed, stream, (row0 + k) * in + j) < p, else scaled
    by float32(1 / (1 - p)); k is the token's index b*T + t in the batch."""
    p = getattr(params, "lora_dropout", 0.0)
    if not p:
        return x
    n_in = x.shape[-1]
    flat = x.reshape(-1, n_in)
    tok = np.arange(flat.shape[0]) if tokens is None else np.asarray(tokens)
    key = (params.lora_row0 + tok).astype(np.uint64)
    counter = key[:, None] * np.uint64(n_in) + np.arange(n_in, dtype=np.uint64)[None, :]
    u = rng_uniform(int(params.lora_seed), params.lora_streams[name], counter)
    p32 = np.float32(p)
    keep = float(np.float32(1.0) / (np.float32(1.0) - p32))
    mask = torch.as_tensor(np.where(u < float(p32), 0.0, keep), dtype=x.dtype)
    return (flat * mask).reshape(x.shape)


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------

def rms_norm(x, w, eps):
    """x * w / sqrt(mean(x^2) + eps) over the last dimension."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def linear(x, w):
    """y = x W^T with W stored [out, in] as in HF."""
    return x @ w.t()


def proj(params, name, x, tokens=None):
    """A projection of the model by its weight's name: x W^T, plus the LoRA
    update s * (drop(x) A^T) B^T when params carries an adapter for it
    (LoraParams). tokens: the batch token (b*T + t) of each row of x, when
    the rows are not simply all tokens in order (a routed expert's rows)."""
    y = linear(x, params[name])
    ad = getattr(params, "lora", {}).get(name)
    if ad is not None:
        a, b = ad
        y = y + params.lora_scale * linear(linear(lora_dropout(params, name, x, tokens), a), b)
    return y


def swiglu(params, prefix, x, tokens=None):
    """W_down(silu(W_gate x) * W_up x)."""
    g = proj(params, prefix + "gate_proj.weight", x, tokens)
    u = proj(params, prefix + "up_proj.weight", x, tokens)
    return proj(params, prefix + "down_proj.weight", F.silu(g) * u, tokens)


def _yarn_mscale(s, m):
    """YaRN's attention temperature sqrt(1/t) = 0.1 m ln(s) + 1 (paper eq. 21), 1 for s <= 1."""
    return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0


def yarn_inv_freq(d_r, theta, y, max_pos):
    """YaRN ("NTK-by-parts") frequencies, from the paper (Peng et al. 2023, sec. 3.2):
    pair j has wavelength lambda_j = 2 pi / theta_j, theta_j = theta^(-2j/d_r), and turns
    r_j = L / lambda_j times over the original context L. Pairs with r_j > beta_fast keep
    theta_j (extrapolation), pairs with r_j < beta_slow become theta_j / s (interpolation),
    linear in j between the two pair indices where r_j equals beta_fast and beta_slow --
    j(beta) = d_r ln(L / (2 pi beta)) / (2 ln theta) -- which DeepSeek floors / ceils to
    whole pairs ("truncate", default on) and clips to [0, d_r - 1]."""
    L = float(y.get("original_max_position_embeddings") or max_pos)
    s = float(y.get("factor") or max_pos / L)
    b_fast, b_slow = float(y.get("beta_fast") or 32), float(y.get("beta_slow") or 1)
    j = torch.arange(d_r // 2, dtype=torch.float64)
    theta_j = theta ** (-2.0 * j / d_r)

    def j_at(beta):
        return d_r * math.log(L / (2 * math.pi * beta)) / (2 * math.log(theta))
    lo, hi = j_at(b_fast), j_at(b_slow)
    if y.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d_r - 1)
    if lo == hi:
        hi += 0.001
    interp = ((j - lo) / (hi - lo)).clamp(0, 1)       # 1: fully interpolated
    return theta_j / s * interp + theta_j * (1 - interp)


def yarn_attention_factor(y, max_pos):
    """The multiplier of cos and sin: attention_factor when given, else
    mscale(s, mscale) / mscale(s, mscale_all_dim) when both are set, else mscale(s, 1)."""
    if y.get("attention_factor") is not None:
        return float(y["attention_factor"])
    L = float(y.get("original_max_position_embeddings") or max_pos)
    s = float(y.get("factor") or max_pos / L)
    m, m_all = y.get("mscale"), y.get("mscale_all_dim")
    if m and m_all:
        return _yarn_mscale(s, m) / _yarn_mscale(s, m_all)
    return _yarn_mscale(s, 1.0)


def softmax_scale(cfg):
    """1/sqrt(qk_head_dim), times mscale(s, mscale_all_dim)^2 under YaRN: DeepSeek
    also scales the non-rotary dims' logits (its modeling code, transformers'
    DeepseekV3Attention)."""
    scale = 1.0 / math.sqrt(cfg.q_head_dim)
    y = cfg.yarn
    if y and y.get("mscale_all_dim"):
        L = float(y.get("original_max_position_embeddings") or cfg.max_position_embeddings)
        s = float(y.get("factor") or cfg.max_position_embeddings / L)
        scale *= _yarn_mscale(s, float(y["mscale_all_dim"])) ** 2
    return scale


def rope_tables(T, d_r, theta, dtype, cfg=None):
    """cos/sin [T, d_r/2] for angle pos * theta^(-2j/d_r), pos = 0..T-1; with
    cfg.yarn, YaRN's frequencies and cos/sin times its attention factor."""
    j = torch.arange(d_r // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * j / d_r)
    mul = 1.0
    if cfg is not None and cfg.yarn:
        inv_freq = yarn_inv_freq(d_r, theta, cfg.yarn, cfg.max_position_embeddings)
        mul = yarn_attention_factor(cfg.yarn, cfg.max_position_embeddings)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return (torch.cos(ang) * mul).to(dtype), (torch.sin(ang) * mul).to(dtype)


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x[2j], x[2j+1]) of the last dim; x is [..., T, d_r].
    This is multiplication of the complex number x[2j] + i x[2j+1] by e^{i angle}."""
    xp = x.unflatten(-1, (-1, 2))
    x0, x1 = xp[..., 0], xp[..., 1]
    out0 = x0 * cos - x1 * sin
    out1 = x0 * sin + x1 * cos
    return torch.stack((out0, out1), dim=-1).flatten(-2)


def mla_attention(cfg, params, prefix, x, cos, sin):
    """Multi-head latent attention, causal, over x [B, T, d]. prefix ends in 'self_attn.'."""
    B, T, _ = x.shape
    H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    eps = cfg.rms_norm_eps

    # Queries: through the low-rank bottleneck c_q when q_lora_rank is set.
    if cfg.q_lora_rank is not None:
        c_q = rms_norm(proj(params, prefix + "q_a_proj.weight", x),
                       params[prefix + "q_a_layernorm.weight"], eps)
        q = proj(params, prefix + "q_b_proj.weight", c_q)
    else:
        q = proj(params, prefix + "q_proj.weight", x)
    q = q.view(B, T, H, dn + dr).transpose(1, 2)            # [B, H, T, dn+dr]
    q_nope, q_pe = q[..., :dn], q[..., dn:]

    # Keys/values: latent c_kv (normed) and one shared rope key k_pe.
    kv_a = proj(params, prefix + "kv_a_proj_with_mqa.weight", x)   # [B, T, r_kv+dr]
    c_kv = rms_norm(kv_a[..., :cfg.kv_lora_rank], params[prefix + "kv_a_layernorm.weight"], eps)
    k_pe = kv_a[..., cfg.kv_lora_rank:].unsqueeze(1)         # [B, 1, T, dr]
    kv = proj(params, prefix + "kv_b_proj.weight", c_kv).view(B, T, H, dn + dv).transpose(1, 2)
    k_nope, v = kv[..., :dn], kv[..., dn:]

    q = torch.cat((q_nope, apply_rope(q_pe, cos, sin)), dim=-1)
    k_pe = apply_rope(k_pe, cos, sin).expand(B, H, T, dr)
    k = torch.cat((k_nope, k_pe), dim=-1)

    scores = (q @ k.transpose(-1, -2)) * softmax_scale(cfg)   # [B, H, T, T]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    o = torch.softmax(scores, dim=-1) @ v                    # [B, H, T, dv]
    o = o.transpose(1, 2).reshape(B, T, H * dv)
    return proj(params, prefix + "o_proj.weight", o)


# ---------------------------------------------------------------------------
# DeepSeekMoE
# ---------------------------------------------------------------------------

@dataclass
class RouterOut:
    """What one MoE layer's router did, for N = B*T tokens."""
    scores: torch.Tensor      # s = sigmoid(x W_r^T) [N, E] (in the autograd graph)
    idx: torch.Tensor         # [N, K] experts used downstream (own, or forced)
    weights: torch.Tensor     # [N, K] routing weights for idx (in the graph)
    own_idx: torch.Tensor     # [N, K] the oracle's own top-K choice
    kth_gap: torch.Tensor     # [N] relative gap between K-th and (K+1)-th masked s+b
    group_gap: torch.Tensor   # [N] relative gap between last kept and first dropped group


def _relative_gap(a, b):
    """(a - b) / max(|a|, |b|), with inf where b = -inf; a >= b assumed."""
    gap = a - b
    scale = torch.maximum(a.abs(), b.abs()).clamp_min(1e-30)
    rel = gap / scale
    return torch.where(torch.isinf(b), torch.full_like(rel, float("inf")), rel)


def route(cfg, x, gate_w, bias, force_idx=None):
    """DeepSeek-V3 router on x [N, d].

    Choice: top-K of s + b, with the group limit when n_group > 1 (group score
    = sum of the group's top-2 s+b; experts of dropped groups get -inf).
    Weights: the chosen s (no b), / their sum if norm_topk_prob, * scaling.
    force_idx [N, K], when given, replaces the choice downstream (the own
    choice is still computed and returned for comparison)."""
    N = x.shape[0]
    E, K, G = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group
    s = torch.sigmoid(linear(x, gate_w))                     # [N, E]

    with torch.no_grad():                                    # selection is not differentiable
        sb = s.detach() + bias
        group_gap = torch.full((N,), float("inf"), dtype=s.dtype)
        if G > 1:
            per = E // G
            grouped = sb.view(N, G, per)
            gscore = grouped.topk(min(2, per), dim=-1).values.sum(-1)    # [N, G]
            gsorted = gscore.sort(dim=-1, descending=True).values
            if cfg.topk_group < G:
                group_gap = _relative_gap(gsorted[:, cfg.topk_group - 1], gsorted[:, cfg.topk_group])
            keep = gscore.topk(cfg.topk_group, dim=-1).indices
            keep_mask = torch.zeros(N, G, dtype=torch.bool).scatter_(1, keep, True)
            sb = sb.masked_fill(~keep_mask.repeat_interleave(per, dim=1), float("-inf"))
        own_idx = sb.topk(K, dim=-1).indices
        kth_gap = torch.full((N,), float("inf"), dtype=s.dtype)
        if K < E:
            top = sb.topk(K + 1, dim=-1).values
            kth_gap = _relative_gap(top[:, K - 1], top[:, K])

    idx = own_idx if force_idx is None else force_idx.to(torch.long)
    w = s.gather(1, idx)
    if cfg.norm_topk_prob:
        w = w / w.sum(-1, keepdim=True)
    w = w * cfg.routed_scaling_factor
    return RouterOut(s, idx, w, own_idx, kth_gap, group_gap)


def moe(cfg, params, prefix, x, bias, force_idx=None):
    """DeepSeekMoE on x [N, d]: sum_k w_k Expert_k(x) + SharedExperts(x).

    Tokens are grouped per expert (sort the (token, slot) pairs by expert,
    gather each expert's tokens with index_select, scatter back with
    index_add_), as a real implementation would, not looped per token."""
    N, d = x.shape
    K = cfg.num_experts_per_tok
    r = route(cfg, x, params[prefix + "gate.weight"], bias, force_idx)

    flat_expert = r.idx.reshape(-1)                            # [N*K]
    flat_token = torch.arange(N).repeat_interleave(K)          # token of each (token, slot)
    flat_w = r.weights.reshape(-1)
    flat_expert_sorted, order = torch.sort(flat_expert, stable=True)
    counts = torch.bincount(flat_expert_sorted, minlength=cfg.n_routed_experts).tolist()

    out = torch.zeros_like(x)
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        sel = order[start:start + c]
        start += c
        tok = flat_token[sel]
        y = swiglu(params, f"{prefix}experts.{e}.", x.index_select(0, tok), tok)
        out.index_add_(0, tok, y * flat_w[sel].unsqueeze(1))
    if cfg.n_shared_experts > 0:
        out = out + swiglu(params, prefix + "shared_experts.", x)
    return out, r


def balance_loss(cfg, r, B, T):
    """Sequence-wise balance loss of one MoE layer:
    alpha * mean_b sum_i f_i P_i, f_i = E/(K T) * #tokens of sequence b choosing i
    (a constant), P_i = mean_t s_ti / sum_j s_tj."""
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    s = r.scores.view(B, T, E)
    with torch.no_grad():
        counts = torch.zeros(B, E, dtype=s.dtype)
        counts.scatter_add_(1, r.idx.view(B, T * K), torch.ones(B, T * K, dtype=s.dtype))
        f = counts * (E / (K * T))
    P = (s / s.sum(-1, keepdim=True)).mean(1)                 # [B, E]
    return cfg.aux_loss_alpha * (f * P).sum(-1).mean()


# ---------------------------------------------------------------------------
# Whole model
# ---------------------------------------------------------------------------

def decoder_layer(cfg, params, buffers, i, h, cos, sin, force_idx=None):
    """h = h + Attn(RMSNorm(h)); h = h + FFN(RMSNorm(h)). Returns (h, RouterOut or None)."""
    p = f"model.layers.{i}."
    eps = cfg.rms_norm_eps
    B, T, d = h.shape
    h = h + mla_attention(cfg, params, p + "self_attn.",
                          rms_norm(h, params[p + "input_layernorm.weight"], eps), cos, sin)
    x = rms_norm(h, params[p + "post_attention_layernorm.weight"], eps)
    if cfg.is_moe_layer(i):
        y, r = moe(cfg, params, p + "mlp.", x.reshape(B * T, d), buffers[bias_name(i)], force_idx)
        return h + y.view(B, T, d), r
    return h + swiglu(params, p + "mlp.", x), None


def cross_entropy_mean(logits, targets):
    """Mean cross-entropy over targets != -100 (0 when there are none)."""
    V = logits.shape[-1]
    flat = targets.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, V), flat, ignore_index=IGNORE_INDEX, reduction="sum")
    count = int((flat != IGNORE_INDEX).sum())
    return total / max(count, 1)


@dataclass
class ForwardOut:
    loss: torch.Tensor                 # total = main + lambda/D sum_k L_k + balance
    loss_main: torch.Tensor
    loss_mtp: List[torch.Tensor]       # L_k for k = 1..D (unweighted)
    loss_balance: torch.Tensor
    logits: torch.Tensor               # main logits [B, T, V]
    routers: Dict[int, RouterOut]      # per MoE layer index


def shift_left(x, k, fill):
    """y[:, t] = x[:, t+k] for t+k < T, else fill."""
    y = torch.full_like(x, fill)
    if k < x.shape[1]:
        y[:, :x.shape[1] - k] = x[:, k:]
    return y


def forward(cfg, params, buffers, input_ids, labels, force_idx=None):
    """Forward pass of the main model and the MTP modules, with all losses.

    input_ids, labels: [B, T] integer tensors (labels[t] = the next token or -100).
    force_idx: optional dict layer -> [B*T, K] expert choice to use in place of
    the router's own (the own choice is still recorded in the RouterOut)."""
    input_ids = torch.as_tensor(input_ids).long()
    labels = torch.as_tensor(labels).long()
    B, T = input_ids.shape
    L, D = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
    eps = cfg.rms_norm_eps
    emb = params["model.embed_tokens.weight"]
    head = params["lm_head.weight"]
    dtype = emb.dtype
    cos, sin = rope_tables(T, cfg.qk_rope_head_dim, cfg.rope_theta, dtype, cfg)
    force_idx = force_idx or {}
    routers = {}

    # Main model.
    h = F.embedding(input_ids, emb)
    for i in range(L):
        h, r = decoder_layer(cfg, params, buffers, i, h, cos, sin, force_idx.get(i))
        if r is not None:
            routers[i] = r
    h_main = h                                      # last hidden state, before model.norm
    logits = linear(rms_norm(h_main, params["model.norm.weight"], eps), head)
    loss_main = cross_entropy_mean(logits, labels)

    # MTP module k (layer L+k-1): embedding of token t+k and the MAIN h_t.
    loss_mtp = []
    for k in range(1, D + 1):
        i = L + k - 1
        p = f"model.layers.{i}."
        e = F.embedding(shift_left(input_ids, k, 0), emb)
        hk = linear(torch.cat((rms_norm(e, params[p + "enorm.weight"], eps),
                               rms_norm(h_main, params[p + "hnorm.weight"], eps)), dim=-1),
                    params[p + "eh_proj.weight"])
        hk, r = decoder_layer(cfg, params, buffers, i, hk, cos, sin, force_idx.get(i))
        if r is not None:
            routers[i] = r
        logits_k = linear(rms_norm(hk, params[p + "shared_head.norm.weight"], eps), head)
        loss_mtp.append(cross_entropy_mean(logits_k, shift_left(labels, k, IGNORE_INDEX)))

    loss_balance = torch.zeros((), dtype=dtype)
    if cfg.balance_loss_on:
        for r in routers.values():
            loss_balance = loss_balance + balance_loss(cfg, r, B, T)

    loss = loss_main + loss_balance
    if D > 0:
        loss = loss + (cfg.mtp_loss_weight / D) * torch.stack(loss_mtp).sum()
    return ForwardOut(loss, loss_main, loss_mtp, loss_balance, logits, routers)


# ---------------------------------------------------------------------------
# Training rules
# ---------------------------------------------------------------------------

def expert_load(cfg, idx):
    """Number of (token, slot) assignments to each expert."""
    return torch.bincount(idx.reshape(-1), minlength=cfg.n_routed_experts)


def bias_update(cfg, bias, idx):
    """Aux-loss-free balancing: b_i += gamma * sign(mean(load) - load_i)."""
    load = expert_load(cfg, idx).to(torch.float64)
    step = cfg.bias_update_speed * torch.sign(load.mean() - load)
    return (bias.to(torch.float64) + step).to(bias.dtype)


def lr_at(cfg, step):
    """Learning rate at 1-based step: linear warmup, then cosine to min_lr.
    Past total_steps the rate stays at min_lr."""
    lr = float(cfg.train_setting("lr"))
    min_lr = float(cfg.ferry.get("min_lr") or 0.0)
    warmup = int(cfg.ferry.get("warmup_steps") or 0)
    total = int(cfg.train_setting("total_steps"))
    if step <= warmup:
        return lr * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def decays(name, shape):
    """Weight decay applies to every 2-D weight except the token embedding."""
    return len(shape) == 2 and name != "model.embed_tokens.weight"


def adamw_param_groups(params, weight_decay):
    """Two torch.optim param groups: decayed and not decayed."""
    dec = [p for n, p in params.items() if decays(n, p.shape)]
    nodec = [p for n, p in params.items() if not decays(n, p.shape)]
    return [{"params": dec, "weight_decay": weight_decay},
            {"params": nodec, "weight_decay": 0.0}]


def fill_missing_grads(params):
    """Parameters outside the graph this step (an expert no token chose) get a
    zero gradient, so AdamW still decays their moments and applies weight decay."""
    for p in params.values():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
