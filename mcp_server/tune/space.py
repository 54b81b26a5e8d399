"""What tuning may change, and the estimator's word on each candidate.

A candidate is a whole set of profile keys: the profile's own fixed keys (MODEL, CTX_SIZE, PARALLEL,
the KV cache type unless a quality trade is allowed, EXTRA_ARGS ...) plus the tuned ones. Every
candidate is *repaired* before it is measured: the expert layers (MoE) or the layers (dense) that
stay on the CPU are set to the fewest the estimator says keep ``reserve`` MiB free on every GPU at
the profile's full context, so each knob is judged with the best placement its memory allows. Only
the experts knob itself moves the placement, and an option of it that does not fit is pruned,
never measured. Host RAM is checked too: CPU-resident weights (memory-mapped: page cache; read
into RAM: resident) plus the host's KV and buffers against the RAM available.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcp_server.model_files.layout import GGUFInspection
from mcp_server.placement.operations import Inventory
from mcp_server.profiles.config import Config, Profile
from mcp_server.tune.search import Goal, Knob, Values

# Keys tuning owns: a candidate sets them or leaves them to llama-server's default.
PLACEMENT = ("N_GPU_LAYERS", "N_CPU_MOE", "OVERRIDE_TENSORS", "FIT", "FIT_TARGET", "FIT_CTX")
TUNED = PLACEMENT + ("THREADS", "BATCH_SIZE", "UBATCH_SIZE", "FLASH_ATTN", "LOAD_MODE")
KV = ("KV_CACHE_TYPE_K", "KV_CACHE_TYPE_V")
# Keys that say what a profile is called or how serve treats it: not part of a launch.
_NOT_LAUNCH = ("NAME", "DESCRIPTION", "SPEED", "ALIASES", "PIN", "PRIORITY", "IDLE_TTL", "SAMPLERS")


@dataclass
class Space:
    config: Config
    profile: Profile
    info: GGUFInspection
    inventory: Inventory
    reserve_mib: float
    allow_kv_quant: bool = False
    threads: tuple[int, int] = (1, 1)  # physical, logical
    host_available_mib: float | None = None
    estimates: int = field(default=0)

    @property
    def moe(self) -> bool:
        return bool(self.info.expert_count)

    @property
    def tuned(self) -> tuple[str, ...]:
        return TUNED + (KV if self.allow_kv_quant else ())

    def fixed(self) -> Values:
        """The profile's own keys that tuning keeps as they are."""
        own = {k: v for k, v in self.profile.values.items() if k not in self.tuned and k not in _NOT_LAUNCH}
        own["MODEL"] = self.profile.model or ""
        return own

    def baseline(self) -> Values:
        """llama.cpp's own choice: the profile's fixed keys, nothing placed, --fit on by default."""
        return self.fixed()

    def start(self, known: Values | None = None) -> Values:
        if known:
            return dict(known)
        values = {**self.fixed(), "FIT": "off", "N_GPU_LAYERS": "all"}
        if self.moe and self.inventory.gpus:
            values["N_CPU_MOE"] = "0"
        return values

    # --- the estimator's word -------------------------------------------------------------------

    def check(self, values: Values) -> str | None:
        """None when ``values`` keep the reserve free on every GPU and fit the host RAM, else why not."""
        from mcp_server.placement.operations import estimate_fit

        self.estimates += 1
        draft = {k: v for k, v in values.items() if k != "MODEL"}
        result = estimate_fit(self.config, "tune-candidate", model=values["MODEL"], values=draft,
                              inventory=self.inventory, replay_fit=True).estimate
        for device in result.devices:
            if device.free_after_mib is not None and device.free_after_mib < self.reserve_mib:
                return (f"{device.device} would keep {device.free_after_mib:.0f} MiB free at {result.n_ctx} context, "
                        f"under the {self.reserve_mib:.0f} MiB reserve")
        if self.host_available_mib is not None and result.host.total_mib > self.host_available_mib:
            how = ("memory-mapped weights live in the page cache, which would then be evicted and read from disk "
                   "again on every token" if values.get("LOAD_MODE", "auto") in ("auto", "mmap") else
                   "the weights read into RAM would be swapped out")
            return (f"host would need {result.host.total_mib:.0f} MiB, {self.host_available_mib:.0f} MiB is "
                    f"available: {how}")
        return None

    def repair(self, values: Values, adjust: bool = True) -> tuple[Values | None, str | None]:
        """The candidate with the tightest safe placement (see the module's docstring); without
        ``adjust``, the candidate as it is, if it is safe."""
        if not self.inventory.gpus or not adjust:
            why = self.check(values)
            return (values, None) if why is None else (None, why)
        if self.moe:
            return self._tightest(values, "N_CPU_MOE", range(0, self.info.n_layer + 1))
        return self._tightest(values, "N_GPU_LAYERS", range(self.info.n_layer + 1, -1, -1))

    def _tightest(self, values: Values, key: str, order: range) -> tuple[Values | None, str | None]:
        """The first value of ``key`` along ``order`` (most on the GPU first) that is safe; the
        estimate is monotone along it, so a binary search finds it."""
        options = list(order)
        lo, hi = 0, len(options) - 1
        first_why = None
        found = None
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = {**values, key: str(options[mid])}
            if key == "N_CPU_MOE":
                candidate["N_GPU_LAYERS"] = "all"
            why = self.check(candidate)
            if why is None:
                found, hi = candidate, mid - 1
            else:
                first_why = first_why or why
                lo = mid + 1
        if found is None:
            return None, first_why or "nothing fits"
        return found, None

    # --- the knobs ----------------------------------------------------------------------------------

    def knobs(self, goal: Goal, best_placement: Values) -> list[Knob]:
        """The knobs in the order most likely to pay, for ``goal``."""
        physical, logical = self.threads
        thread_options = sorted({max(1, physical // 2), max(1, physical - 1), logical} - {physical})
        cpu_weights = not self.inventory.gpus or (self.moe and best_placement.get("N_CPU_MOE", "0") != "0") or (
            not self.moe and best_placement.get("N_GPU_LAYERS") not in (None, "all", str(self.info.n_layer + 1)))
        knobs = {
            "threads": Knob(name="threads", options=[{"THREADS": str(n)} for n in thread_options]),
            "ubatch": Knob(name="ubatch", options=[{"UBATCH_SIZE": "1024", "BATCH_SIZE": "2048"},
                                                   {"UBATCH_SIZE": "2048", "BATCH_SIZE": "2048"}]),
            "flash_attn": Knob(name="flash_attn", options=[{"FLASH_ATTN": "on"}, {"FLASH_ATTN": "off"}]),
            "load_mode": Knob(name="load_mode", options=[{"LOAD_MODE": "none"}]),
        }
        if self.allow_kv_quant:
            knobs["kv"] = Knob(name="kv", options=[{"KV_CACHE_TYPE_K": "q8_0", "KV_CACHE_TYPE_V": "q8_0"}])
        order = (["threads", "load_mode", "ubatch", "flash_attn", "kv"] if goal == "generation" else
                 ["ubatch", "load_mode", "flash_attn", "threads", "kv"])
        chosen = [knobs[name] for name in order if name in knobs]
        if not cpu_weights:  # everything on the GPUs: threads and the load mode change nothing worth a load
            chosen = [k for k in chosen if k.name not in ("threads", "load_mode")]
        return chosen

    def experts_knob(self, best: Values) -> Knob | None:
        """One layer more and one fewer on the CPU than the tightest: the fewer is pruned by the
        estimator unless the reserve allows it (it is shown, never measured, when pruned)."""
        if not self.inventory.gpus:
            return None
        key = "N_CPU_MOE" if self.moe else "N_GPU_LAYERS"
        now = best.get(key)
        if now is None or not now.isdigit():
            return None
        n = int(now)
        step = 1 if self.moe else -1
        options = [n - step, n + step]
        low, high = (0, self.info.n_layer) if self.moe else (0, self.info.n_layer + 1)
        return Knob(name="experts" if self.moe else "layers", repair=False,
                    options=[{key: str(v)} for v in options if low <= v <= high])
