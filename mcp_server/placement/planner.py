"""Placement planner: the llama-server settings that put the most of a model on the GPUs and still fit.

The planner searches candidate settings and scores each with the estimator (``estimate.estimate``),
so a plan and an estimate of the same settings always agree. The order of preference:

1. the whole model on one GPU (``SPLIT_MODE=none``): no cross-GPU traffic;
2. all layers on the GPUs, split by layer with an integer ``TENSOR_SPLIT`` (layer counts);
3. for MoE models, attention, shared experts, router and KV cache stay on the GPUs and routed
   experts go to the CPU layer by layer (``OVERRIDE_TENSORS``), with each GPU's layer range
   chosen so the GPUs hold as many expert bytes as possible, and one more layer's experts split
   by tensor to fill the rest;
4. for dense models, layers from the front go to the CPU (``N_GPU_LAYERS`` below the total), with
   a warning: every CPU layer costs speed in proportion;
5. if even that does not fit, the context is halved (down to ``min_ctx``) and the search repeats.

Each GPU keeps ``reserve_mib`` beyond the estimate (which already includes the runtime overhead)
for the memory pool's growth after the first prompts and for the compute-buffer approximation.
llama.cpp's own ``--fit`` keeps 1024 MiB per GPU; a calibrated estimate can afford less, which
is where the planner's extra speed comes from (docs/gpu-validation/placement-speed.md).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, Field

from mcp_server.errors import ValidationError
from mcp_server.placement.estimate import KV_TYPES, MIB, Estimate, Settings, cuda_alloc_bytes, estimate, override_for
from mcp_server.model_files.layout import GGUFInspection

Strategy = Literal["single-gpu", "layer-split", "moe-experts-cpu", "dense-spill", "cpu-only"]
DEFAULT_RESERVE_MIB = 384.0
EXPERT_ROLE_RE = re.compile(r"ffn_(gate_up|gate|up|down)_(ch)?exps")


class Plan(BaseModel):
    model: str
    strategy: Strategy
    settings: dict[str, str] = Field(description="models.conf keys and values to write into a profile")
    unset: list[str] = Field(default_factory=list, description="keys to remove from the profile (they would conflict)")
    argv: list[str] = Field(description="the same settings as llama-server flags")
    estimate: Estimate
    budgets_mib: list[float] = Field(description="per GPU: free memory minus the reserve")
    gpu_weight_fraction: float = Field(description="share of the weights on the GPUs")
    experts_on_cpu_layers: int = 0
    layers_on_cpu: int = 0
    ctx_requested: int
    ctx: int
    traded: list[str] = Field(default_factory=list, description="what was given up to fit")
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


def choose_placement(info: GGUFInspection, *, gpus_free_mib: list[float], ctx: int = 0, kv_type: str = "f16",
                   slots: int = 1, ubatch: int = 512, reserve_mib: float = DEFAULT_RESERVE_MIB,
                   overhead_mib: float | None = None, min_ctx: int = 4096,
                   host_free_mib: float | None = None, device_names: list[str] | None = None,
                   device_overheads: list[float | None] | None = None, remote: int = 0) -> Plan:
    """Plan settings for ``info`` on GPUs with the given free memory (MiB) at context ``ctx`` (0 = training).

    ``remote``: how many of the devices (the first ones, named in ``device_names``) are RPC workers'.
    Those plans split the model over every device (a single device is not tried: the workers were
    asked for), and search with the GPU overhead everywhere, which over-counts a worker's CPU device:
    safe, not tight."""
    if kv_type not in KV_TYPES:
        raise ValidationError("kv_type", kv_type, f"must be one of {', '.join(KV_TYPES)}")
    if slots < 1:
        raise ValidationError("slots", str(slots), "must be at least 1")
    if any(g <= 0 for g in gpus_free_mib):
        raise ValidationError("gpus", ",".join(f"{g:.0f}" for g in gpus_free_mib), "every GPU needs free memory > 0")
    requested = ctx or info.n_ctx_train or 4096
    budgets = [g - reserve_mib for g in gpus_free_mib]
    traded: list[str] = []
    n_ctx = requested
    while True:
        base = Settings(n_ctx=n_ctx, n_parallel=slots, n_ubatch=ubatch, cache_type_k=kv_type, cache_type_v=kv_type,
                        flash_attn="on" if kv_type not in ("f16", "f32", "bf16") else "auto", fit=False)
        found = _search(info, base, budgets, overhead_mib, single=remote == 0)
        if found is not None or n_ctx // 2 < min_ctx or not budgets:  # no GPU: a shorter context buys nothing
            break
        n_ctx //= 2
    if found is None:
        found = _cpu_only(info, base, budgets, overhead_mib)
    if n_ctx != requested:
        traded.append(f"context reduced from {requested} to {n_ctx} tokens")
    strategy, settings, _ = found
    # Report against what is free (the search compared with the budgets, i.e. free minus the reserve).
    if strategy == "single-gpu":
        est = estimate(info, replace(settings, main_gpu=0), [gpus_free_mib[settings.main_gpu]], overhead_mib)
    else:
        est = estimate(info, settings, list(gpus_free_mib), overhead_mib, device_names=device_names,
                       device_overheads=device_overheads)
    plan = _describe(info, strategy, settings, est, budgets, requested, n_ctx, traded, host_free_mib)
    if remote and est.fits:
        used = [d.device for d in est.devices if d.weights_mib > 0]
        plan.notes.append(f"fits across {', '.join(used)} at {n_ctx} tokens of context")
    return plan


# --- search ---------------------------------------------------------------------------------


Found = tuple[Strategy, Settings, Estimate]


def _fits(est: Estimate, budgets: list[float]) -> bool:
    return all(d.total_mib <= b for d, b in zip(est.devices, budgets))


def _search(info: GGUFInspection, base: Settings, budgets: list[float], overhead: float | None,
            single: bool = True) -> Found | None:
    if not budgets:
        return None
    # 1. one GPU, largest budget first (the process is then shown only that GPU: see _describe)
    for gpu in sorted(range(len(budgets)), key=lambda g: -budgets[g]) if single else ():
        s = replace(base, split_mode="none", main_gpu=gpu, n_gpu_layers=-1)
        est = estimate(info, replace(s, main_gpu=0), [budgets[gpu]], overhead)
        if est.devices[0].total_mib <= budgets[gpu]:
            return "single-gpu", s, est
    if len(budgets) > 1:
        # 2. every layer on the GPUs, split by layer counts
        split = _best_layer_split(info, base, budgets, overhead)
        if split is not None:
            return split
    if info.expert_count:
        return _experts_to_cpu(info, base, budgets, overhead)
    return _dense_spill(info, base, budgets, overhead)


def _layer_counts(n_total: int, n_gpus: int) -> list[list[int]]:
    """Integer splits of n_total layers (blocks + output) over the GPUs (every GPU may get 0)."""
    if n_gpus == 1:
        return [[n_total]]
    return [[k, *rest] for k in range(n_total + 1) for rest in _layer_counts(n_total - k, n_gpus - 1)]


def _split_candidates(info: GGUFInspection, n_gpus: int) -> list[list[int]]:
    total = info.n_layer + 1
    if n_gpus == 1:
        return [[]]  # one GPU: no tensor split at all
    if n_gpus > 3:  # too many combinations: proportional splits only
        return [[total // n_gpus + (1 if g < total % n_gpus else 0) for g in range(n_gpus)]]
    return [c for c in _layer_counts(total, n_gpus) if c[-1] > 0]  # the last GPU holds the output layer


def _best_layer_split(info: GGUFInspection, base: Settings, budgets: list[float], overhead: float | None) -> Found | None:
    best: tuple[float, Found] | None = None
    for counts in _split_candidates(info, len(budgets)):
        s = replace(base, split_mode="layer", n_gpu_layers=-1, tensor_split=[float(c) for c in counts])
        est = estimate(info, s, budgets, overhead)
        if not _fits(est, budgets):
            continue
        # Prefer the split that leaves the most headroom on the tightest GPU (relative to its budget).
        slack = min((b - d.total_mib) / b for d, b in zip(est.devices, budgets))
        if best is None or slack > best[0]:
            best = (slack, ("layer-split", s, est))
    return best[1] if best else None


def _expert_tensors(info: GGUFInspection) -> dict[int, dict[str, tuple[int, str]]]:
    """Per layer: expert tensor role -> (CUDA bytes, tensor name)."""
    out: dict[int, dict[str, tuple[int, str]]] = {}
    for t in info.tensors:
        if t.kind != "experts" or t.layer is None:
            continue
        m = EXPERT_ROLE_RE.search(t.name)
        role = m.group(1) if m else t.name
        out.setdefault(t.layer, {})[role] = (cuda_alloc_bytes(t.type, t.shape, t.bytes), t.name)
    return out


def _exps_pattern(layers: list[int], roles: tuple[str, ...] = ("gate_up", "gate", "up", "down")) -> str:
    """One -ot pattern for the expert tensors ``roles`` of ``layers`` (ids joined in one alternation,
    so 40 layers stay one short rule instead of 40)."""
    return rf"blk\.({'|'.join(str(i) for i in layers)})\.ffn_({'|'.join(roles)})_(ch|)exps"


def _expert_overrides(cpu_layers: list[int], partial: dict[int, tuple[str, ...]]) -> list[tuple[str, str]]:
    rules = [(_exps_pattern(sorted(cpu_layers)), "CPU")] if cpu_layers else []
    rules += [(_exps_pattern([layer], roles), "CPU") for layer, roles in sorted(partial.items())]
    return rules


def _experts_to_cpu(info: GGUFInspection, base: Settings, budgets: list[float], overhead: float | None) -> Found | None:
    """Layer ranges per GPU and expert layers per GPU that keep the most expert bytes on the GPUs."""
    experts = _expert_tensors(info)
    all_layers = sorted(experts)
    best: tuple[tuple[int, float], Found] | None = None
    for counts in _split_candidates(info, len(budgets)):
        s_all = replace(base, split_mode="layer", n_gpu_layers=-1, tensor_split=[float(c) for c in counts],
                        overrides=_expert_overrides(all_layers, {}))
        est_all = estimate(info, s_all, budgets, overhead)
        if not _fits(est_all, budgets):
            continue
        # Give experts back to each GPU's layers while its budget allows (all layers of a model
        # usually carry equal experts, so a greedy count per GPU is optimal).
        owner = {il: next(d for d, dev in enumerate(est_all.devices) if il in dev.layers) for il in all_layers
                 if any(il in dev.layers for dev in est_all.devices)}
        room = [b - d.total_mib for d, b in zip(est_all.devices, budgets)]
        kept: set[int] = set()
        partial: dict[int, tuple[str, ...]] = {}
        for gpu in range(len(budgets)):
            mine = [il for il in all_layers if owner.get(il) == gpu]
            for il in reversed(mine):  # the last layers of each range keep their experts
                need = sum(b for b, _ in experts[il].values()) / MIB
                if need <= room[gpu]:
                    kept.add(il)
                    room[gpu] -= need
                    continue
                # Part of one more layer: the largest subset of its expert tensors that fits.
                roles = sorted(experts[il], key=lambda r: -experts[il][r][0])
                on_gpu = []
                for r in roles:
                    if experts[il][r][0] / MIB <= room[gpu]:
                        on_gpu.append(r)
                        room[gpu] -= experts[il][r][0] / MIB
                if on_gpu:
                    partial[il] = tuple(r for r in experts[il] if r not in on_gpu)
                break
        cpu_layers = [il for il in all_layers if il not in kept and il not in partial]
        s = replace(s_all, overrides=_expert_overrides(cpu_layers, partial))
        est = _shrink_until_fits(info, s, budgets, overhead, experts, cpu_layers, partial)
        if est is None:
            continue
        s, est = est
        # Most weight bytes on the GPUs wins; among equals, the fewest override rules.
        key = (round(sum(d.weights_mib for d in est.devices)), -len(s.overrides))
        if best is None or key > best[0]:
            best = (key, ("moe-experts-cpu", s, est))
    return best[1] if best else None


def _shrink_until_fits(info: GGUFInspection, s: Settings, budgets: list[float], overhead: float | None,
                       experts: dict[int, dict[str, tuple[int, str]]], cpu_layers: list[int],
                       partial: dict[int, tuple[str, ...]]) -> tuple[Settings, Estimate] | None:
    """The greedy count ignores second-order effects (compute buffer changes); correct them here."""
    cpu_layers, partial = list(cpu_layers), dict(partial)
    for _ in range(len(experts) + 1):
        est = estimate(info, s, budgets, overhead)
        over = [g for g, (d, b) in enumerate(zip(est.devices, budgets)) if d.total_mib > b]
        if not over:
            return s, est
        gpu = over[0]
        on_gpu = [il for il in sorted(experts) if il in est.devices[gpu].layers and il not in cpu_layers]
        if not on_gpu:
            return None
        victim = min(on_gpu)
        partial.pop(victim, None)
        cpu_layers.append(victim)
        s = replace(s, overrides=_expert_overrides(cpu_layers, partial))
    return None


def _dense_spill(info: GGUFInspection, base: Settings, budgets: list[float], overhead: float | None) -> Found | None:
    """Fewer layers on the GPUs (the first ones go to the CPU), split in proportion to the budgets."""
    several = len(budgets) > 1
    for ngl in range(info.n_layer, 0, -1):
        s = replace(base, split_mode="layer" if several else "none", n_gpu_layers=ngl,
                    tensor_split=[round(b) for b in budgets] if several else [])
        est = estimate(info, s, budgets, overhead)
        if _fits(est, budgets):
            return "dense-spill", s, est
    return None


def _cpu_only(info: GGUFInspection, base: Settings, budgets: list[float], overhead: float | None) -> Found:
    s = replace(base, n_gpu_layers=0, split_mode="none")
    return "cpu-only", s, estimate(info, s, budgets, overhead)


# --- result ---------------------------------------------------------------------------------


def _fmt_split(values: list[float]) -> str:
    return ",".join(str(int(v)) if float(v).is_integer() else str(v) for v in values)


def settings_to_profile(s: Settings, n_gpus: int) -> tuple[dict[str, str], list[str]]:
    """The models.conf keys for settings ``s`` (and the placement keys to remove)."""
    values = {"CTX_SIZE": str(s.n_ctx), "PARALLEL": str(s.slots), "FIT": "off",
              "N_GPU_LAYERS": "all" if s.n_gpu_layers < 0 else str(s.n_gpu_layers)}
    unset = ["N_CPU_MOE"]
    if s.cache_type_k != "f16" or s.cache_type_v != "f16":
        values["KV_CACHE_TYPE_K"], values["KV_CACHE_TYPE_V"] = s.cache_type_k, s.cache_type_v
    else:
        unset += ["KV_CACHE_TYPE_K", "KV_CACHE_TYPE_V"]
    if s.flash_attn != "auto":
        values["FLASH_ATTN"] = s.flash_attn
    if s.n_ubatch != 512:
        values["UBATCH_SIZE"] = str(s.n_ubatch)
    if n_gpus > 1 or (n_gpus and s.split_mode == "none"):
        values["SPLIT_MODE"] = s.split_mode
    if s.split_mode == "none" and n_gpus:
        values["MAIN_GPU"] = str(s.main_gpu)
        unset.append("TENSOR_SPLIT")
    elif s.tensor_split:
        values["TENSOR_SPLIT"] = _fmt_split(s.tensor_split)
        unset.append("MAIN_GPU")
    if s.overrides:
        values["OVERRIDE_TENSORS"] = ",".join(f"{p}={b}" for p, b in s.overrides)
    else:
        unset.append("OVERRIDE_TENSORS")
    return values, [k for k in unset if k not in values]


def settings_to_argv(values: dict[str, str]) -> list[str]:
    from mcp_server.profiles.config import KEYS

    argv: list[str] = []
    for key, value in values.items():
        flag = KEYS[key].flag if key in KEYS else None
        if flag:
            argv += [flag, value]
    return argv


def _describe(info: GGUFInspection, strategy: Strategy, s: Settings, est: Estimate, budgets: list[float],
              requested: int, n_ctx: int, traded: list[str], host_free_mib: float | None) -> Plan:
    values, unset = settings_to_profile(s, len(budgets))
    notes: list[str] = []
    if strategy == "single-gpu" and len(budgets) > 1:
        # Only the chosen GPU is made visible: llama.cpp would otherwise create a CUDA context
        # (about 0.5 GiB) on every other GPU too. Inside the process that GPU is CUDA0.
        values.update(VISIBLE_DEVICES=str(s.main_gpu), MAIN_GPU="0")
        unset = [k for k in unset if k != "VISIBLE_DEVICES"]
        notes.append(f"runs on GPU {s.main_gpu} alone (VISIBLE_DEVICES={s.main_gpu}); the other GPUs stay free")
    else:
        unset.append("VISIBLE_DEVICES")
    gpu_w = sum(d.weights_mib for d in est.devices)
    total_w = gpu_w + est.host.weights_mib
    warnings: list[str] = []
    experts_cpu = 0
    if strategy in ("moe-experts-cpu", "dense-spill"):
        # Measured (docs/gpu-validation/placement-speed.md): reading the CPU-resident weights into
        # pinned RAM (LOAD_MODE=none) doubled prompt speed but cut generation by 13%, so the plan
        # keeps the default memory map and says what the other choice would do.
        notes.append("prompt-heavy work: LOAD_MODE=none puts the CPU-resident weights in pinned RAM; on H200s it "
                     "doubled prompt tokens/s and cost 13% generation speed (and needs that much free RAM)")
    if strategy == "moe-experts-cpu":
        exp_layers = {t.layer for t in info.tensors if t.kind == "experts"}
        on_gpu = {il for d in est.devices for il in d.layers}
        cpu_exp_mib = 0.0
        layers_with_cpu_experts = set()
        for t in info.tensors:
            if t.kind == "experts" and override_for(t.name, s.overrides) == "CPU":
                cpu_exp_mib += t.bytes / MIB
                layers_with_cpu_experts.add(t.layer)
        experts_cpu = len(layers_with_cpu_experts)
        traded.append(f"routed experts of {experts_cpu} of {len(exp_layers)} layers on the CPU "
                      f"({cpu_exp_mib / 1024:.1f} GiB); attention, shared experts and KV cache of all "
                      f"{len(on_gpu)} layers on the GPUs")
    layers_cpu = 0
    if strategy in ("dense-spill", "cpu-only"):
        layers_cpu = info.n_layer + 1 - (s.n_gpu_layers if s.n_gpu_layers >= 0 else info.n_layer + 1)
        traded.append(f"{layers_cpu} of {info.n_layer + 1} layers on the CPU")
        if budgets:
            warnings.append("a dense model with layers on the CPU generates several times slower than on the GPU: "
                            "consider a smaller quantisation, a shorter context or q8_0 KV cache")
    if strategy == "cpu-only" and budgets:
        warnings.append("nothing fits the GPUs at the minimum context: the plan runs on the CPU")
    if host_free_mib is not None and est.host.total_mib > host_free_mib:
        warnings.append(f"host memory: the plan needs {est.host.total_mib:.0f} MiB of RAM for CPU weights and "
                        f"buffers, {host_free_mib:.0f} MiB are available")
    return Plan(model=info.path, strategy=strategy, settings=values, unset=unset, argv=settings_to_argv(values),
                estimate=est, budgets_mib=[round(b, 1) for b in budgets],
                gpu_weight_fraction=round(gpu_w / total_w, 4) if total_w else 0.0, experts_on_cpu_layers=experts_cpu,
                layers_on_cpu=layers_cpu, ctx_requested=requested, ctx=n_ctx, traded=traded, warnings=warnings,
                notes=notes)
