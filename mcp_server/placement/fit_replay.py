"""What llama-server's ``--fit`` (on by default) would do to a launch, replayed with the estimator.

llama.cpp's fit (common/fit.cpp in build 11434) probes memory with dry-run loads and then:
1. changes nothing when every GPU keeps its margin (``--fit-target``, 1024 MiB by default) free;
2. if the context was left unset (0), shrinks it towards ``--fit-ctx`` (4096) until the model's
   total fits the GPUs' combined free memory, in steps of 256 per stream;
3. stops there if the user pinned the placement (``-ngl``, ``-ts``, ``-ot``/``--cpu-moe``, ``-sm row``);
4. otherwise fills the GPUs from the last one back with layers (for MoE models, layers whose
   routed experts stay on the CPU), the rest of the layers going to the CPU;
5. for MoE models, gives layers their experts back, front to back, while the GPUs have room.

Our replay uses our estimate where fit uses its dry runs, so it inherits the estimate's error in
the compute and overhead terms: expect the same choice within a layer. Fit also reads live free
memory, so its choice moves with whatever else uses the GPU (a desktop on the display GPU).
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import BaseModel, Field

from mcp_server.placement.estimate import DeviceEstimate, Estimate, Settings, estimate, experts_on_cpu
from mcp_server.model_files.layout import GGUFInspection

FIT_MIN_CTX = 4096


class FitOutcome(BaseModel):
    changed: bool
    n_ctx: int | None = Field(description="context fit chose (None: unchanged)")
    n_gpu_layers: int | None = None
    tensor_split: list[int] = Field(default_factory=list, description="layers per GPU fit chose")
    experts_on_cpu_layers: list[int] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    estimate: Estimate


def _margins(s: Settings, n: int) -> list[float]:
    t = s.fit_target_mib or [1024]
    return [float(t[0] if len(t) == 1 else t[i] if i < len(t) else t[-1]) for i in range(n)]


# Fit measures free memory after its own CUDA context exists, and counts only llama.cpp's buffers:
# on the H200s the context held 526 MiB at that point (free reported by fit = free before - buffers
# - 526). The rest of the runtime overhead (pool, cuBLAS) appears later and eats into fit's margin.
FIT_CONTEXT_MIB = 526.0


def _seen(d: "DeviceEstimate") -> float:
    """What fit counts for a device: the buffers plus the context that existed when it measured."""
    return d.total_mib - d.overhead_mib + (FIT_CONTEXT_MIB if d.total_mib else 0.0)


def _fits(est: Estimate, limits: list[float]) -> bool:
    return all(_seen(d) <= lim for d, lim in zip(est.devices, limits))


def emulate_fit(info: GGUFInspection, s: Settings, free_mib: list[float], *, ctx_was_set: bool,
                overhead_mib: float | None = None) -> tuple[Settings, FitOutcome]:
    """The settings llama-server ends up with after fit, and what fit changed."""
    limits = [f - m for f, m in zip(free_mib, _margins(s, len(free_mib)))]
    est = estimate(info, s, free_mib, overhead_mib)
    unchanged = FitOutcome(changed=False, n_ctx=None, estimate=est)
    if not s.fit or not free_mib or s.n_gpu_layers == 0 or _fits(est, limits):
        return s, unchanged
    notes: list[str] = []
    pinned = s.n_gpu_layers >= 0 or bool(s.tensor_split) or bool(s.overrides) or s.split_mode == "row"
    out = s
    if not ctx_was_set:
        out, est = _shrink_ctx(info, s, free_mib, limits, overhead_mib)
        notes.append(f"fit shrinks the context to {out.n_ctx}")
        if _fits(est, limits):
            return out, FitOutcome(changed=True, n_ctx=out.n_ctx, notes=notes, estimate=est)
    if pinned:
        notes.append("the placement is pinned (-ngl, -ts, -ot or -sm row): fit leaves it, and the launch may not fit")
        return out, FitOutcome(changed=out is not s, n_ctx=out.n_ctx if out is not s else None, notes=notes,
                               estimate=est)
    out, est, counts, cpu_expert_layers = _fill_layers(info, out, free_mib, limits, overhead_mib)
    notes.append("fit places layers itself (replayed: expect the same choice within a layer)")
    return out, FitOutcome(changed=True, n_ctx=out.n_ctx if not ctx_was_set else None,
                           n_gpu_layers=out.n_gpu_layers, tensor_split=counts,
                           experts_on_cpu_layers=cpu_expert_layers, notes=notes, estimate=est)


def _shrink_ctx(info: GGUFInspection, s: Settings, free: list[float], limits: list[float],
                overhead: float | None) -> tuple[Settings, Estimate]:
    """Largest context (a multiple of 256 per stream, at least 4096) whose total fits all GPUs together."""
    streams = 1 if s.unified else s.slots
    step = 256 * streams
    hi = info.n_ctx_train or 4096
    lo = max(FIT_MIN_CTX * streams, step)

    def total(n_ctx: int) -> tuple[float, Estimate, Settings]:
        t = replace(s, n_ctx=n_ctx)
        e = estimate(info, t, free, overhead)
        return sum(_seen(d) for d in e.devices), e, t

    budget = sum(limits)
    best = total(lo)
    lo_i, hi_i = lo // step, max(hi // step, lo // step)
    while lo_i < hi_i:
        mid = (lo_i + hi_i + 1) // 2
        candidate = total(mid * step)
        if candidate[0] <= budget:
            best, lo_i = candidate, mid
        else:
            hi_i = mid - 1
    return best[2], best[1]


def _fill_layers(info: GGUFInspection, s: Settings, free: list[float], limits: list[float],
                 overhead: float | None) -> tuple[Settings, Estimate, list[int], list[int]]:
    if info.expert_count:
        return _fill_moe(info, s, free, limits, overhead)
    n_total = info.n_layer + 1
    counts = [0] * len(free)
    # Back to front: the last GPU holds the output layer and the last blocks; the rest go to the CPU.
    for gpu in reversed(range(len(free))):
        placed = sum(counts)
        for k in range(n_total - placed, -1, -1):
            trial = counts.copy()
            trial[gpu] = k
            if k == 0 or _seen(estimate(info, _layered(s, trial), free, overhead).devices[gpu]) <= limits[gpu]:
                counts = trial
                break
    s_out = _layered(s, counts)
    return s_out, estimate(info, s_out, free, overhead), counts, []


def _fill_moe(info: GGUFInspection, s: Settings, free: list[float], limits: list[float],
              overhead: float | None) -> tuple[Settings, Estimate, list[int], list[int]]:
    """MoE: every layer on a GPU; front GPUs take whole layers while they fit, the last GPU takes
    the rest, of which the last ones keep only their dense part (experts on the CPU). That is where
    fit's back-to-front fill of expert-less layers and its front-to-back conversion to whole layers end."""
    n_total, nd = info.n_layer + 1, len(free)

    def attempt(counts: list[int], cpu_layers: list[int]) -> tuple[Settings, Estimate]:
        t = replace(s, n_gpu_layers=n_total, tensor_split=[float(c) for c in counts],
                    overrides=experts_on_cpu(cpu_layers))
        return t, estimate(info, t, free, overhead)

    counts = [0] * nd
    start = 0
    for gpu in range(nd - 1):
        for k in range(n_total - start - 1, -1, -1):
            trial = counts.copy()
            trial[gpu], trial[-1] = k, n_total - start - k
            rest = list(range(start + k, info.n_layer))
            _, est = attempt(trial, rest)
            if k == 0 or _seen(est.devices[gpu]) <= limits[gpu]:
                counts, start = trial, start + k
                break
    counts[-1] = n_total - start
    last_blocks = list(range(start, info.n_layer))
    best: tuple[Settings, Estimate, list[int]] | None = None
    for n_cpu in range(len(last_blocks), -1, -1):  # fewer expert-less layers while the last GPU fits
        cpu = last_blocks[len(last_blocks) - n_cpu:]
        t, est = attempt(counts, cpu)
        fits = _seen(est.devices[-1]) <= limits[-1]
        if best is None or fits:  # all experts of the last GPU's layers on the CPU, if nothing fits
            best = (t, est, cpu)
        if not fits:
            break
    assert best is not None
    t, est, cpu_layers = best
    return t, est, counts, cpu_layers


def _layered(s: Settings, counts: list[int]) -> Settings:
    """Dense fill: ``counts`` layers per GPU, the front layers left on the CPU (s has no -ot: fit
    only places layers itself when the user pinned none)."""
    return replace(s, n_gpu_layers=sum(counts), tensor_split=[float(c) for c in counts] if sum(counts) else [])


