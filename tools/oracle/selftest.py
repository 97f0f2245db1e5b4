#!/usr/bin/env python3
"""Self-test of the oracle, without the C side (ctest: oracle_selftest).

Checks, on tiny configs in float64:
  - safetensors write/read round trip (and BF16 reading);
  - RoPE against complex multiplication, MLA attention against a per-token loop;
  - grouped MoE against a per-token loop;
  - the router group limit masks with -inf (a case where HF's 0.0 differs);
  - autograd gradients against central finite differences (routing forced);
  - dense-only, plain q_proj, MTP D=2 variants run and give every parameter a gradient;
  - AdamW (torch.optim) against the hand-written decoupled update, the LR schedule;
  - check_case.py and train_ref.py accept a float32 run of the oracle posing as
    ferry, and reject it once corrupted.
Exit 0 pass, 1 fail, 77 if torch is unavailable.
"""

import copy
import json
import math
import os
import sys
import tempfile
import time

try:
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds3  # noqa: E402
import check_case  # noqa: E402
import train_ref  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads() or 1))

BASE = {
    "vocab_size": 48, "hidden_size": 16, "intermediate_size": 24,
    "moe_intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
    "q_lora_rank": 12, "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4,
    "v_head_dim": 6, "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
    "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1, "norm_topk_prob": True,
    "routed_scaling_factor": 1.5, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
    "num_nextn_predict_layers": 1, "aux_loss_alpha": 0.01, "seq_aux": True,
    "ferry": {"bias_update_speed": 0.001, "mtp_loss_weight": 0.3, "lr": 3e-3, "min_lr": 3e-4,
              "warmup_steps": 2, "total_steps": 6, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
              "weight_decay": 0.1, "grad_clip": 1.0},
}

FAILURES = []


def check(cond, what):
    print(f"  {'ok  ' if cond else 'FAIL'} {what}")
    if not cond:
        FAILURES.append(what)


def make_cfg(**over):
    j = copy.deepcopy(BASE)
    j.update(over)
    return ds3.Config.from_dict(j), j


def make_batch(cfg, B, T, seed, n_ignore=2):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    labels = tokens[:, 1:].clone()
    labels[0, :n_ignore] = ds3.IGNORE_INDEX        # some ignored positions
    return tokens[:, :-1].to(torch.int32), labels.to(torch.int32)


# ---------------------------------------------------------------------------

def test_safetensors(tmp):
    print("safetensors")
    path = os.path.join(tmp, "t.safetensors")
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([[1, -2]], dtype=np.int32),
         "s": np.array([3.5], dtype=np.float32)}
    ds3.save_safetensors(path, a, {"k": "v"})
    b, meta = ds3.load_safetensors(path)
    check(all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a) and meta == {"k": "v"},
          "round trip of F32/I32 tensors and metadata")
    # BF16: 1.0 = 0x3F80, -2.5 = 0xC020
    hdr = json.dumps({"h": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    with open(path, "wb") as f:
        f.write(len(hdr).to_bytes(8, "little") + hdr + bytes([0x80, 0x3F, 0x20, 0xC0]))
    b, _ = ds3.load_safetensors(path)
    check(b["h"].tolist() == [1.0, -2.5], "BF16 widened to float32")


def test_rope_and_attention():
    print("RoPE and attention")
    T, dr, theta = 5, 6, 500.0
    cos, sin = ds3.rope_tables(T, dr, theta, torch.float64)
    x = torch.randn(3, T, dr, dtype=torch.float64)
    ang = torch.tensor([[t * theta ** (-2 * j / dr) for j in range(dr // 2)] for t in range(T)],
                       dtype=torch.float64)
    z = torch.view_as_complex(x.view(3, T, dr // 2, 2).contiguous()) * torch.polar(torch.ones_like(ang), ang)
    ref = torch.view_as_real(z).reshape(3, T, dr)
    check(torch.allclose(ds3.apply_rope(x, cos, sin), ref, atol=1e-13), "interleaved RoPE = complex rotation")

    # MLA attention vs an explicit loop over batch, head and query position.
    cfg, _ = make_cfg()
    params, _ = ds3.init_params(cfg, seed=1, std=0.3)
    for n, p in params.items():  # non-trivial norm weights
        if p.dim() == 1:
            p.data.uniform_(0.5, 1.5)
    B, T, d = 2, 5, cfg.hidden_size
    x = torch.randn(B, T, d, dtype=torch.float64)
    cos, sin = ds3.rope_tables(T, cfg.qk_rope_head_dim, cfg.rope_theta, torch.float64)
    pre = "model.layers.0.self_attn."
    with torch.no_grad():
        got = ds3.mla_attention(cfg, params, pre, x, cos, sin)
        ref = naive_mla(cfg, params, pre, x)
    check(torch.allclose(got, ref, atol=1e-12), "MLA attention = per-token loop")


def test_yarn():
    """YaRN's defining properties (Peng et al. 2023): pairs that turn more than beta_fast
    times over the original context keep their frequency, fewer than beta_slow times get
    it divided by the factor; a factor of 1 is plain RoPE; the cos/sin multiplier and the
    DeepSeek softmax scale follow 0.1 m ln(s) + 1."""
    print("YaRN")
    dr, theta, L = 32, 10000.0, 2048
    y = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": L, "beta_fast": 32, "beta_slow": 1}
    f = ds3.yarn_inv_freq(dr, theta, y, 4 * L)
    for j in range(dr // 2):
        base = theta ** (-2 * j / dr)
        turns = L * base / (2 * math.pi)
        if turns > 32 * 1.5:   # clear of the (floored) ramp start
            check(abs(f[j] - base) <= 1e-15 * base, f"pair {j} ({turns:.1f} turns) keeps its frequency")
        if turns < 1 / 1.5:
            check(abs(f[j] - base / 4) <= 1e-15 * base, f"pair {j} ({turns:.2f} turns) is interpolated")
        check(base / 4 - 1e-15 <= f[j] <= base + 1e-15, f"pair {j} between the two")
    check(torch.all(f[1:] <= f[:-1]).item(), "frequencies still decrease with j")
    one = ds3.yarn_inv_freq(dr, theta, dict(y, factor=1.0), L)
    check(torch.allclose(one, theta ** (-2 * torch.arange(dr // 2, dtype=torch.float64) / dr), rtol=1e-15),
          "factor 1 is plain RoPE")
    s = 4.0
    check(abs(ds3.yarn_attention_factor(dict(y, mscale=0.707, mscale_all_dim=1.0), L) -
              (0.1 * 0.707 * math.log(s) + 1) / (0.1 * math.log(s) + 1)) < 1e-15, "mscale ratio")
    check(abs(ds3.yarn_attention_factor(y, L) - (0.1 * math.log(s) + 1)) < 1e-15, "paper's default")
    check(ds3.yarn_attention_factor(dict(y, attention_factor=0.5), L) == 0.5, "explicit attention_factor")
    cfg, _ = make_cfg()
    plain = ds3.softmax_scale(cfg)
    cfg.yarn = dict(y, mscale_all_dim=1.0)
    check(abs(ds3.softmax_scale(cfg) / plain - (0.1 * math.log(s) + 1) ** 2) < 1e-12, "softmax mscale^2")


def naive_mla(cfg, P, pre, x):
    """MLA written token by token, straight from the formulas of docs/DESIGN.md section 2."""
    B, T, d = x.shape
    H, dn, dr, dv, eps = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                          cfg.v_head_dim, cfg.rms_norm_eps)

    def norm(v, w):
        return v * w / math.sqrt(float((v * v).mean()) + eps)

    def rope(v, pos):
        out = v.clone()
        for j in range(dr // 2):
            a = pos * cfg.rope_theta ** (-2 * j / dr)
            out[2 * j] = v[2 * j] * math.cos(a) - v[2 * j + 1] * math.sin(a)
            out[2 * j + 1] = v[2 * j] * math.sin(a) + v[2 * j + 1] * math.cos(a)
        return out

    out = torch.zeros(B, T, d, dtype=x.dtype)
    for b in range(B):
        q, k, v = [], [], []
        for t in range(T):
            cq = norm(P[pre + "q_a_proj.weight"] @ x[b, t], P[pre + "q_a_layernorm.weight"])
            qt = (P[pre + "q_b_proj.weight"] @ cq).view(H, dn + dr)
            kva = P[pre + "kv_a_proj_with_mqa.weight"] @ x[b, t]
            ckv = norm(kva[:cfg.kv_lora_rank], P[pre + "kv_a_layernorm.weight"])
            kpe = rope(kva[cfg.kv_lora_rank:], t)
            kv = (P[pre + "kv_b_proj.weight"] @ ckv).view(H, dn + dv)
            q.append([torch.cat((qt[i, :dn], rope(qt[i, dn:], t))) for i in range(H)])
            k.append([torch.cat((kv[i, :dn], kpe)) for i in range(H)])
            v.append([kv[i, dn:] for i in range(H)])
        for t in range(T):
            heads = []
            for i in range(H):
                sc = torch.stack([q[t][i] @ k[s][i] for s in range(t + 1)]) / math.sqrt(dn + dr)
                p = torch.softmax(sc, 0)
                heads.append(sum(p[s] * v[s][i] for s in range(t + 1)))
            out[b, t] = P[pre + "o_proj.weight"] @ torch.cat(heads)
    return out


def test_moe_grouping():
    print("MoE")
    cfg, _ = make_cfg()
    params, buffers = ds3.init_params(cfg, seed=2, std=0.3, bias_std=0.05)
    x = torch.randn(11, cfg.hidden_size, dtype=torch.float64)
    pre = "model.layers.1.mlp."
    with torch.no_grad():
        y, r = ds3.moe(cfg, params, pre, x, buffers[ds3.bias_name(1)])
        ref = torch.zeros_like(x)
        for n in range(x.shape[0]):
            for k in range(cfg.num_experts_per_tok):
                e = int(r.idx[n, k])
                ref[n] += r.weights[n, k] * ds3.swiglu(params, f"{pre}experts.{e}.", x[n:n + 1])[0]
            ref[n] += ds3.swiglu(params, pre + "shared_experts.", x[n:n + 1])[0]
        s = torch.sigmoid(x @ params[pre + "gate.weight"].t())
        w = s.gather(1, r.idx)
    check(torch.allclose(y, ref, atol=1e-13), "grouped experts = per-token loop")
    check(torch.allclose(r.weights, 1.5 * w / w.sum(1, keepdim=True), atol=1e-15),
          "weights = chosen s (no bias) normalised, times routed_scaling_factor")


def test_group_limit():
    print("router group limit")
    cfg, _ = make_cfg(hidden_size=1)  # one input feature: the gate column is the logit
    logits = torch.tensor([[2.0], [1.5], [-3.0], [-3.0], [1.0], [0.9], [0.8], [0.7]], dtype=torch.float64)
    bias = torch.full((8,), -2.0, dtype=torch.float64)  # every s+b is negative
    x = torch.ones(1, 1, dtype=torch.float64)
    r = ds3.route(cfg, x, logits, bias)
    own = sorted(r.own_idx[0].tolist())
    # What Hugging Face's port does: dropped groups get 0.0 instead of -inf.
    sb = torch.sigmoid(logits.t()) + bias
    g = sb.view(1, 2, 4).topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros(1, 2, dtype=torch.bool).scatter_(1, g.topk(1, dim=-1).indices, True)
    hf = sorted(sb.masked_fill(~keep.repeat_interleave(4, 1), 0.0).topk(2, dim=-1).indices[0].tolist())
    check(own == [0, 1], f"kept group 0 gives experts [0, 1] (got {own})")
    check(hf != own, f"HF's 0.0 masking would pick {hf} instead")


def test_near_tie():
    print("router near-ties in check_case")
    cfg, _ = make_cfg(hidden_size=1, n_group=1, topk_group=1)
    # expert 0 is first; experts 1 and 2 tie for second (s+b equal up to 1e-9)
    logits = torch.tensor([[3.0], [1.0], [1.0 + 1e-9], [0.0], [-1.0], [-1.0], [-2.0], [-3.0]],
                          dtype=torch.float64)
    bias = torch.zeros(8, dtype=torch.float64)
    r = ds3.route(cfg, torch.ones(1, 1, dtype=torch.float64), logits, bias)
    own = r.own_idx[0].tolist()
    other = 1 if 2 in own else 2
    for ferry, expect, what in (([other, 0], True, "the other side of a near-tie is accepted"),
                                ([0, 3], False, "a clearly lower expert is rejected")):
        table = check_case.Table()
        check_case.check_router_choice(cfg, table, 0, r, torch.tensor([ferry]), bias)
        check(table.all_pass == expect, f"{what} (own {own}, ferry {ferry})")


def total_loss_fn(cfg, params, buffers, ids, labels, force):
    return ds3.forward(cfg, params, buffers, ids, labels, force_idx=force).loss


def test_gradients():
    print("gradients vs finite differences")
    cfg, _ = make_cfg()
    params, buffers = ds3.init_params(cfg, seed=3, std=0.2, bias_std=0.02)
    ids, labels = make_batch(cfg, 2, 6, seed=4)
    out = ds3.forward(cfg, params, buffers, ids, labels)
    out.loss.backward()
    force = {i: r.idx for i, r in out.routers.items()}  # freeze routing: the loss is smooth
    names = ["model.layers.1.mlp.gate.weight", "model.layers.0.self_attn.q_b_proj.weight",
             "model.layers.1.self_attn.kv_a_proj_with_mqa.weight", "model.layers.2.eh_proj.weight",
             "model.layers.0.self_attn.kv_a_layernorm.weight", "model.embed_tokens.weight",
             "model.layers.2.mlp.experts.3.down_proj.weight", "lm_head.weight"]
    g = torch.Generator().manual_seed(5)
    h = 1e-5
    for name in names:
        p = params[name]
        v = torch.randn(p.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            p += h * v
            lp = total_loss_fn(cfg, params, buffers, ids, labels, force).item()
            p -= 2 * h * v
            lm = total_loss_fn(cfg, params, buffers, ids, labels, force).item()
            p += h * v
        fd = (lp - lm) / (2 * h)
        an = float((p.grad * v).sum())
        rel = abs(fd - an) / max(abs(fd), 1e-12)
        check(rel < 1e-6, f"{name}: autograd {an:.10f} vs finite diff {fd:.10f} (rel {rel:.1e})")
    check(out.loss_balance.item() > 0 and len(out.loss_mtp) == 1, "balance loss and MTP loss present")


def test_variants():
    print("variants")
    variants = {
        "dense only": dict(n_routed_experts=0, num_nextn_predict_layers=0),
        "plain q_proj, no group limit": dict(q_lora_rank=None, n_group=1, topk_group=1),
        "MTP D=2, no shared expert, no norm_topk": dict(num_nextn_predict_layers=2, n_shared_experts=0,
                                                        norm_topk_prob=False),
    }
    for what, over in variants.items():
        cfg, _ = make_cfg(**over)
        params, buffers = ds3.init_params(cfg, seed=6)
        ids, labels = make_batch(cfg, 2, 5, seed=7)
        out = ds3.forward(cfg, params, buffers, ids, labels)
        out.loss.backward()
        ds3.fill_missing_grads(params)
        used = all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in params.values())
        moe_ok = sorted(out.routers) == cfg.moe_layers
        check(math.isfinite(out.loss.item()) and used and moe_ok and
              len(out.loss_mtp) == cfg.num_nextn_predict_layers,
              f"{what}: loss {out.loss.item():.5f}, MoE layers {cfg.moe_layers}")
    cfg, _ = make_cfg(num_nextn_predict_layers=2)
    check(cfg.moe_layers == [1, 2, 3] and "model.layers.3.eh_proj.weight" in ds3.parameter_shapes(cfg),
          "MTP modules are layers L..L+D-1 and MoE under first_k_dense_replace")


def test_optimizer():
    print("optimizer and schedule")
    cfg, _ = make_cfg()
    lrs = [ds3.lr_at(cfg, s) for s in range(1, 8)]
    ref = [1.5e-3, 3e-3] + [3e-4 + 0.5 * 2.7e-3 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)] + [3e-4]
    check(all(abs(a - b) < 1e-15 for a, b in zip(lrs, ref)), "warmup + cosine LR, min_lr after total_steps")

    # torch.optim.AdamW == ferry's p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), two steps.
    p = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone()
    opt = torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    m = torch.zeros_like(q)
    v = torch.zeros_like(q)
    for t in (1, 2):
        grad = torch.randn(4, 3, dtype=torch.float64)
        p.grad = grad.clone()
        opt.step()
        m = 0.9 * m + 0.1 * grad
        v = 0.95 * v + 0.05 * grad * grad
        upd = (m / (1 - 0.9 ** t)) / ((v / (1 - 0.95 ** t)).sqrt() + 1e-8)
        q = q - 0.01 * (upd + 0.1 * q)
    check(torch.allclose(p.detach(), q, atol=1e-14), "torch AdamW = decoupled update with bias correction")
    params, _ = ds3.init_params(cfg)
    groups = ds3.adamw_param_groups(params, 0.1)
    check(len(groups[0]["params"]) + len(groups[1]["params"]) == len(params)
          and any(p is params["model.embed_tokens.weight"] for p in groups[1]["params"])
          and any(p is params["lm_head.weight"] for p in groups[0]["params"]), "decay on 2-D weights except the embedding")
    b = torch.zeros(8, dtype=torch.float64)
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 4]])  # loads 3,2,1,1,1,0,0,0 (mean 1)
    nb = ds3.bias_update(cfg, b, idx)
    check(nb.tolist() == [-0.001, -0.001, 0.0, 0.0, 0.0, 0.001, 0.001, 0.001],
          "bias update b += gamma * sign(mean load - load)")


def as_f32(d, grad):
    return {k: v.detach().to(torch.float32).clone().requires_grad_(grad) for k, v in d.items()}


def test_check_case(tmp):
    """A float32 oracle run plays ferry: check_case must pass it, and fail a corrupted copy."""
    print("check_case.py on a float32 run")
    cfg, cj = make_cfg()
    params, buffers = ds3.init_params(cfg, seed=8, std=0.1, bias_std=0.01)
    p32, b32 = as_f32(params, True), as_f32(buffers, False)
    ids, labels = make_batch(cfg, 2, 8, seed=9)
    out = ds3.forward(cfg, p32, b32, ids, labels)
    out.loss.backward()
    case = {k: v.detach() for k, v in {**p32, **b32}.items()}
    case.update({"input_ids": ids, "labels": labels,
                 "out.loss": out.loss.detach().reshape(1), "out.loss_main": out.loss_main.detach().reshape(1),
                 "out.loss_mtp": torch.stack(out.loss_mtp).detach(),
                 "out.loss_balance": out.loss_balance.detach().reshape(1),
                 "out.logits": out.logits.detach()})
    for n, p in p32.items():
        case["grad." + n] = p.grad if p.grad is not None else torch.zeros_like(p)
    for i, r in out.routers.items():
        case[f"out.router_idx.{i}"] = r.idx.to(torch.int32)
        case[f"out.router_w.{i}"] = r.weights.detach()
        case[f"out.bias_after.{i}"] = ds3.bias_update(cfg, b32[ds3.bias_name(i)], r.idx)
    d = os.path.join(tmp, "case")
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cj, f)
    ds3.save_safetensors(os.path.join(d, "case.safetensors"), case)
    ok, table = check_case.check_case(d, verbose=False)
    if not ok:
        table.print()
    check(ok, f"float32 run passes ({len(table.rows)} rows)")

    bad = dict(case)
    bad["grad.model.layers.0.self_attn.o_proj.weight"] = case["grad.model.layers.0.self_attn.o_proj.weight"] * 1.001
    idx = case["out.router_idx.1"].clone()
    r = out.routers[1]
    # swap a token's top choice for an expert it clearly did not choose
    n = int(torch.argmax(r.kth_gap.clamp_max(1e9)))
    unused = [e for e in range(cfg.n_routed_experts) if e not in idx[n].tolist()]
    idx[n, 0] = unused[0]
    bad["out.router_idx.1"] = idx
    ds3.save_safetensors(os.path.join(d, "case.safetensors"), bad)
    ok, table = check_case.check_case(d, verbose=False)
    failed = sorted(r[0] for r in table.rows if not r[4])
    check(not ok and "grad.model.layers.0.self_attn.o_proj.weight" in failed and "router_idx.1" in failed,
          f"corrupted gradient and router choice are caught ({', '.join(failed[:4])}...)")


def test_train_ref(tmp):
    """A float32 training run plays ferry: train_ref must accept it, and reject a corrupted loss."""
    print("train_ref.py on a float32 run")
    cfg, cj = make_cfg()
    params, buffers = ds3.init_params(cfg, seed=10, std=0.1)
    S, B, T = 4, 2, 8
    # the same batch every step, so the loss must fall
    batches = [make_batch(cfg, B, T, seed=20) for s in range(S)]
    ids = torch.stack([b[0] for b in batches])
    labels = torch.stack([b[1] for b in batches])
    d = os.path.join(tmp, "train")
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cj, f)
    ds3.save_safetensors(os.path.join(d, "init.safetensors"),
                         {k: v.detach().to(torch.float32) for k, v in {**params, **buffers}.items()})
    ds3.save_safetensors(os.path.join(d, "batches.safetensors"), {"input_ids": ids, "labels": labels})
    losses = [l for l, _ in train_ref.run(cfg, as_f32(params, True), as_f32(buffers, False), ids.long(), labels.long())]
    with open(os.path.join(d, "ferry_losses.json"), "w") as f:
        json.dump({"loss": losses}, f)
    ok, errs = train_ref.check_training(d, verbose=False)
    check(ok and losses[-1] < losses[0], f"float32 run passes (worst rel err {max(errs):.1e}), loss falls")
    losses[2] *= 1.002
    with open(os.path.join(d, "ferry_losses.json"), "w") as f:
        json.dump({"loss": losses}, f)
    ok, errs = train_ref.check_training(d, verbose=False)
    check(not ok and int(np.argmax(errs)) == 2, "a 2e-3 error at step 3 is caught")


def main():
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="ferry-oracle-") as tmp:
        test_safetensors(tmp)
        test_rope_and_attention()
        test_yarn()
        test_moe_grouping()
        test_group_limit()
        test_near_tie()
        test_gradients()
        test_variants()
        test_optimizer()
        test_check_case(tmp)
        test_train_ref(tmp)
    print(f"{'FAIL' if FAILURES else 'PASS'}: {len(FAILURES)} failures ({time.time() - t0:.1f} s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
