#!/usr/bin/env python3
"""Check one forward/backward case written by ferry against the oracle (float64).

Usage: check_case.py CASE_DIR

CASE_DIR/config.json       HF DeepseekV3 keys + "ferry" object
CASE_DIR/case.safetensors  every parameter and buffer (HF names, F32),
                           input_ids, labels [B,T] I32, and ferry's outputs:
                           out.loss, out.loss_main, out.loss_mtp [D],
                           out.loss_balance, out.logits [B,T,V],
                           grad.<param> for every parameter,
                           out.router_idx.<layer> [B*T,K] I32,
                           out.router_w.<layer> [B*T,K],
                           out.bias_after.<layer> [E]
CASE_DIR/lora.json         (LoRA cases only) {"rank", "alpha", "targets",
                           "dropout", "seed", "step", "row0", "streams"}:
                           the case then also holds the adapters under
                           PEFT's names (base_model.model.<module>.lora_A/B.weight)
                           and grad.<adapter>; the base is frozen, so the
                           case has no grad.<param> and bias_after must
                           equal the bias.

Tolerances: losses rel <= 1e-5; logits and gradients ||a-b||/||b|| <= 1e-4;
router choice equal except at near-ties (relative gap < 1e-5), after which
ferry's choice is used downstream; router weights rel <= 1e-5; bias_after
max abs <= 1e-7. Prints one table row per compared tensor.
Exit 0 if all pass, 1 otherwise, 77 if torch is unavailable.
"""

import json
import os
import sys

try:
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds3  # noqa: E402

TOL_LOSS = 1e-5
TOL_TENSOR = 1e-4
TOL_ROUTER_W = 1e-5
TOL_TIE = 1e-5
TOL_BIAS = 1e-7


def _rel(a, b):
    """||a-b|| / ||b||; 0 when both are zero, inf when only b is."""
    diff = float(np.linalg.norm((a - b).ravel()))
    ref = float(np.linalg.norm(b.ravel()))
    if ref == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / ref


class Table:
    """Accumulates (name, max abs err, error, tolerance, pass) rows."""

    def __init__(self):
        self.rows = []

    def add(self, name, max_abs, err, tol, ok=None, note=""):
        if ok is None:
            ok = bool(err <= tol)  # NaN fails
        self.rows.append((name, max_abs, err, tol, ok, note))
        return ok

    def compare(self, name, ferry, ref, tol):
        """Per-tensor relative L2 error of ferry's array against the reference."""
        ferry = np.asarray(ferry, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if ferry.shape != ref.shape:
            return self.add(name, float("nan"), float("inf"), tol, False,
                            f"shape {ferry.shape} != {ref.shape}")
        max_abs = float(np.max(np.abs(ferry - ref))) if ferry.size else 0.0
        return self.add(name, max_abs, _rel(ferry, ref), tol)

    def missing(self, name):
        return self.add(name, float("nan"), float("inf"), 0.0, False, "missing in case")

    @property
    def all_pass(self):
        return all(r[4] for r in self.rows)

    def print(self, out=sys.stdout):
        w = max([len(r[0]) for r in self.rows] + [6])
        print(f"{'tensor':<{w}}  {'max_abs_err':>11}  {'error':>10}  {'tol':>8}  result", file=out)
        for name, max_abs, err, tol, ok, note in self.rows:
            print(f"{name:<{w}}  {max_abs:11.3e}  {err:10.3e}  {tol:8.1e}  "
                  f"{'PASS' if ok else 'FAIL'}{'  ' + note if note else ''}", file=out)
        n_fail = sum(not r[4] for r in self.rows)
        print(f"{len(self.rows)} compared, {n_fail} failed", file=out)


def check_router_choice(cfg, table, layer, r, ferry_idx, bias):
    """Compare the oracle's own top-K with ferry's, allowing near-ties.

    A token whose chosen set differs passes only when the choice was a near
    tie: the relative gap between the K-th and (K+1)-th masked s+b, or
    between the last kept and first dropped group score, is below TOL_TIE.
    For a K-th/(K+1)-th tie we also require every expert ferry chose to score
    within the tolerance of the oracle's K-th value (a swap, not a wrong set)."""
    N, K = r.own_idx.shape
    E = cfg.n_routed_experts
    name = f"router_idx.{layer}"
    if tuple(ferry_idx.shape) != (N, K):
        return table.add(name, float("nan"), float("inf"), 0, False,
                         f"shape {tuple(ferry_idx.shape)} != {(N, K)}")
    if ferry_idx.min() < 0 or ferry_idx.max() >= E:
        return table.add(name, float("nan"), float("inf"), 0, False, "expert id out of range")
    srt = ferry_idx.sort(dim=1).values
    if K > 1 and bool((srt[:, 1:] == srt[:, :-1]).any()):
        return table.add(name, float("nan"), float("inf"), 0, False, "repeated expert in a row")

    differ = (srt != r.own_idx.sort(dim=1).values).any(dim=1)
    # The swap test: ferry's chosen s+b all >= own K-th value (within tolerance).
    sb = r.scores.detach() + bias
    kth = sb.gather(1, r.own_idx).min(dim=1).values
    ferry_min = sb.gather(1, ferry_idx).min(dim=1).values
    swap_ok = (kth - ferry_min) <= TOL_TIE * torch.maximum(kth.abs(), ferry_min.abs()).clamp_min(1e-30)
    tie_ok = ((r.kth_gap < TOL_TIE) & swap_ok) | (r.group_gap < TOL_TIE)
    n_diff = int(differ.sum())
    n_bad = int((differ & ~tie_ok).sum())
    return table.add(name, float(n_bad), float(n_bad), 0, n_bad == 0,
                     f"{n_diff} of {N} tokens differ, {n_diff - n_bad} at near-ties")


def load_lora(cfg, case_dir, case, params):
    """For a LoRA case (CASE_DIR/lora.json): freezes the base params and
    returns ds3.LoraParams with the adapters of every targeted linear (which
    ones: ds3.lora_targeted, from the targets alone) read from the case as
    float64 leaves, also listed in .leaves (name -> tensor); else None."""
    path = os.path.join(case_dir, "lora.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lc = json.load(f)
    r, targets = int(lc["rank"]), lc["targets"].split(",")
    for p in params.values():
        p.requires_grad_(False)
    adapters, leaves = {}, {}
    for w in ds3.lora_targeted(cfg, targets):
        out_f, in_f = params[w].shape
        pair = []
        for which, shape in (("A", (r, in_f)), ("B", (out_f, r))):
            name = ds3.lora_name(w, which)
            if name not in case:
                raise KeyError(f"missing adapter {name}")
            t = torch.as_tensor(np.asarray(case[name])).to(torch.float64)
            if tuple(t.shape) != shape:
                raise ValueError(f"adapter {name}: shape {tuple(t.shape)}, expected {shape}")
            leaves[name] = t.clone().requires_grad_(True)
            pair.append(leaves[name])
        adapters[w] = tuple(pair)
    if not adapters:
        raise ValueError(f"LoRA targets {targets} match nothing")
    lp = ds3.LoraParams(params, adapters, float(lc["alpha"]) / r, float(lc.get("dropout", 0.0)),
                        int(lc.get("seed", 0)), int(lc.get("step", 0)), int(lc.get("row0", 0)),
                        {k: int(v) for k, v in lc.get("streams", {}).items()})
    lp.leaves = leaves
    return lp


def check_case(case_dir, verbose=True):
    """Run all comparisons. Returns (all_pass, Table)."""
    cfg = ds3.Config.load(os.path.join(case_dir, "config.json"))
    case, _ = ds3.load_safetensors(os.path.join(case_dir, "case.safetensors"))
    table = Table()
    params, buffers = ds3.tensors_to_model(cfg, case, torch.float64)
    model_params, lora_params = params, load_lora(cfg, case_dir, case, params)
    if lora_params is not None:
        model_params = lora_params
        lora_params = lora_params.leaves
    input_ids = torch.as_tensor(case["input_ids"]).long()
    labels = torch.as_tensor(case["labels"]).long()
    B, T = input_ids.shape

    # Ferry's router choices are used downstream so that a legitimate near
    # tie cannot cascade; each layer's own choice is checked below.
    force = {}
    for i in cfg.moe_layers:
        key = f"out.router_idx.{i}"
        if key in case and tuple(case[key].shape) == (B * T, cfg.num_experts_per_tok):
            force[i] = torch.as_tensor(case[key]).long()

    out = ds3.forward(cfg, model_params, buffers, input_ids, labels, force_idx=force)
    out.loss.backward()

    # Losses.
    def loss_row(name, ref):
        key = "out." + name
        if key not in case:
            return table.missing(key)
        ferry = np.asarray(case[key], dtype=np.float64).ravel()
        ref = np.atleast_1d(np.asarray(ref, dtype=np.float64))
        if ferry.shape != ref.shape:
            return table.add(key, float("nan"), float("inf"), TOL_LOSS, False,
                             f"shape {ferry.shape} != {ref.shape}")
        max_abs = float(np.max(np.abs(ferry - ref)))
        rel = max(float(abs(f - r) / abs(r)) if r != 0 else (0.0 if f == 0 else float("inf"))
                  for f, r in zip(ferry, ref))
        return table.add(key, max_abs, rel, TOL_LOSS, note=f"ref {', '.join(f'{x:.8g}' for x in ref)}")

    loss_row("loss", out.loss.item())
    loss_row("loss_main", out.loss_main.item())
    if cfg.num_nextn_predict_layers > 0:
        loss_row("loss_mtp", [x.item() for x in out.loss_mtp])
    loss_row("loss_balance", out.loss_balance.item())

    if "out.logits" in case:
        table.compare("out.logits", case["out.logits"], out.logits.detach().numpy(), TOL_TENSOR)
    else:
        table.missing("out.logits")

    # Routers: choice, weights, and the aux-free bias update.
    for i in cfg.moe_layers:
        r = out.routers[i]
        key = f"out.router_idx.{i}"
        if i in force:
            check_router_choice(cfg, table, i, r, force[i], buffers[ds3.bias_name(i)])
        elif key in case:
            table.add(key, float("nan"), float("inf"), 0, False,
                      f"shape {tuple(case[key].shape)} != {(B * T, cfg.num_experts_per_tok)}")
        else:
            table.missing(key)
        key = f"out.router_w.{i}"
        if key in case:
            table.compare(key, case[key], r.weights.detach().numpy(), TOL_ROUTER_W)
        else:
            table.missing(key)
        key = f"out.bias_after.{i}"
        if key in case:
            bias = buffers[ds3.bias_name(i)]
            # A frozen base (LoRA) keeps its router bias: the adapter is trained
            # against the base it will be loaded onto.
            ref = bias.numpy() if lora_params is not None else ds3.bias_update(cfg, bias, r.idx).numpy()
            ferry = np.asarray(case[key], dtype=np.float64)
            if ferry.shape != ref.shape:
                table.add(key, float("nan"), float("inf"), TOL_BIAS, False, "shape mismatch")
            else:
                max_abs = float(np.max(np.abs(ferry - ref)))
                table.add(key, max_abs, max_abs, TOL_BIAS, note="error = max abs")
        else:
            table.missing(key)

    # Gradients of the total loss. A LoRA case's base has none (frozen: ferry
    # keeps no gradient buffer for it, and any grad.<base> in the case is
    # reported below as unexpected); the adapters' are compared after this.
    # (For a LoRA case: the adapters' gradients instead.)
    for name, p in (params if lora_params is None else lora_params).items():
        key = "grad." + name
        ref = p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape))
        if key in case:
            table.compare(key, case[key], ref, TOL_TENSOR)
        else:
            table.missing(key)

    # Anything else in the file is a naming disagreement.
    known = set(params) | set(buffers) | {"input_ids", "labels"}
    known |= set(lora_params or {}) | {"grad." + n for n in lora_params or {}}
    if lora_params is None:
        known |= {"grad." + n for n in params}
    known |= {"out." + n for n in ("loss", "loss_main", "loss_mtp", "loss_balance", "logits")}
    for i in cfg.moe_layers:
        known |= {f"out.router_idx.{i}", f"out.router_w.{i}", f"out.bias_after.{i}"}
    for name in sorted(set(case) - known):
        table.add(name, float("nan"), float("inf"), 0, False, "unexpected tensor in case")

    if verbose:
        print(f"case {case_dir}: B={B} T={T} layers={cfg.num_hidden_layers}+{cfg.num_nextn_predict_layers} "
              f"MoE layers={cfg.moe_layers}")
        table.print()
    return table.all_pass, table


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        ok, _ = check_case(argv[1])
    except (OSError, KeyError, ValueError, NotImplementedError) as e:
        print(f"FAIL: {e}")
        return 1
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
