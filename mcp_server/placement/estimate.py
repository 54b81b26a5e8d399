"""Per-device memory estimate for a llama-server launch, by replaying llama.cpp's placement rules.

Exact terms (given the settings): which device every tensor lands on (``-ngl`` counting the
output layer, ``-ts`` with float32 upper-bound rounding, ``-ot`` first match in command-line
order, ``--n-cpu-moe``, ``-sm none``, the tied-embedding duplicate, CUDA row padding and 128-byte
alignment), KV cache (context padding to 256, slots and unified KV, SWA cell counts, MLA K-only,
per-layer KV heads) and recurrent state. Approximate terms: compute buffers and the per-GPU
runtime overhead (CUDA context, cuBLAS, memory pool), which calibration corrects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from pydantic import BaseModel, Field

from mcp_server.errors import ValidationError
from mcp_server.model_files.ggml_types import BLOCKS_BY_NAME
from mcp_server.model_files.layout import GGUFInspection
from mcp_server.profiles.config import KV_CACHE_TYPES

MIB = 1024 * 1024
CPU = -1

# KV cache type -> (elements per block, bytes per block): the profile's cache types, sized by ggml.
KV_TYPES: dict[str, tuple[int, int]] = {name: BLOCKS_BY_NAME[name.upper()] for name in KV_CACHE_TYPES}
EXPS_PATTERN = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
# Runtime memory llama.cpp does not log (CUDA context, cuBLAS workspace, memory pool) per GPU:
# NVML per-process memory minus the logged buffers after the first prompt, on H200s with build
# 11434 (docs/gpu-validation/estimator.md): 600-612 MiB for attention-only models, 698-716 MiB
# for MoE, MLA and recurrent ones (the pool grows ~100 MiB more under their kernels). A GPU the
# process can see but puts nothing on still gets a context: 518 MiB. Other GPUs, drivers and
# builds differ: `llama-pilot calibrate` measures them and later estimates use the measurement.
OVERHEAD_ATTENTION_MIB = 606.0
OVERHEAD_OTHER_MIB = 706.0
IDLE_GPU_OVERHEAD_MIB = 518.0


def default_overhead(info: GGUFInspection) -> float:
    plain = not info.expert_count and not info.recurrent_layers and not info.is_mla
    return OVERHEAD_ATTENTION_MIB if plain else OVERHEAD_OTHER_MIB


@dataclass
class Settings:
    """The llama-server flags that change memory, resolved like llama-server resolves them."""

    n_ctx: int = 0  # 0 = the model's training context
    n_gpu_layers: int = -1  # -1 = all (auto without fit)
    split_mode: str = "layer"
    tensor_split: list[float] = field(default_factory=list)
    main_gpu: int = 0
    overrides: list[tuple[str, str]] = field(default_factory=list)  # CLI order, first match wins
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "auto"
    n_parallel: int = -1  # -1 = auto: 4 slots, unified KV
    kv_unified: bool | None = None
    n_batch: int = 2048
    n_ubatch: int = 512
    swa_full: bool = False
    no_kv_offload: bool = False
    fit: bool = True
    fit_target_mib: list[int] = field(default_factory=lambda: [1024])

    @property
    def slots(self) -> int:
        return 4 if self.n_parallel < 0 else self.n_parallel

    @property
    def unified(self) -> bool:
        if self.kv_unified is not None:
            return self.kv_unified
        return self.n_parallel < 0


_INT_FLAGS = {"-c": "n_ctx", "--ctx-size": "n_ctx", "-np": "n_parallel", "--parallel": "n_parallel",
              "-b": "n_batch", "--batch-size": "n_batch", "-ub": "n_ubatch", "--ubatch-size": "n_ubatch",
              "-mg": "main_gpu", "--main-gpu": "main_gpu"}


def settings_from_argv(argv: list[str]) -> Settings:
    """Read the memory-relevant flags of a llama-server argv (last occurrence wins, as in llama.cpp)."""
    s = Settings()
    i = 1
    while i < len(argv):
        flag = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else ""
        step = 2
        if flag in _INT_FLAGS:
            setattr(s, _INT_FLAGS[flag], int(value))
        elif flag in ("-ngl", "--gpu-layers", "--n-gpu-layers"):
            s.n_gpu_layers = -1 if value in ("auto", "all") else int(value)
        elif flag in ("-sm", "--split-mode"):
            s.split_mode = value
        elif flag in ("-ts", "--tensor-split"):
            s.tensor_split = [float(x) for x in value.replace("/", ",").split(",")]
        elif flag in ("-ot", "--override-tensor"):
            for item in value.split(","):
                pattern, _, buft = item.rpartition("=")
                s.overrides.append((pattern, buft))
        elif flag in ("-ncmoe", "--n-cpu-moe"):
            s.overrides += experts_on_cpu(range(int(value)))
        elif flag in ("-cmoe", "--cpu-moe"):
            s.overrides.append((EXPS_PATTERN, "CPU"))
            step = 1
        elif flag in ("-ctk", "--cache-type-k"):
            s.cache_type_k = value
        elif flag in ("-ctv", "--cache-type-v"):
            s.cache_type_v = value
        elif flag in ("-fa", "--flash-attn"):
            s.flash_attn = value
        elif flag in ("-kvu", "--kv-unified"):
            s.kv_unified, step = True, 1
        elif flag in ("-nkvo", "--no-kv-offload"):
            s.no_kv_offload, step = True, 1
        elif flag == "--swa-full":
            s.swa_full, step = True, 1
        elif flag in ("-fit", "--fit"):
            s.fit = value != "off"
        elif flag in ("-fitt", "--fit-target"):
            s.fit_target_mib = [int(x) for x in value.split(",")]
        elif flag.startswith("-") and (not value or value.startswith("-")):
            step = 1  # a switch without a value
        i += step
    return s


# --- placement -------------------------------------------------------------------------------


def layer_devices(n_layer: int, n_gpu_layers: int, split: list[float]) -> list[int]:
    """Device of each block and, last, of the output layer: llama.cpp's float32 upper-bound rule."""
    ngl = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    cumulative = np.cumsum(np.asarray(split, dtype=np.float32), dtype=np.float32)
    cumulative = (cumulative / cumulative[-1]).astype(np.float32)
    start, active = max(n_layer + 1 - ngl, 0), min(ngl, n_layer + 1)
    devices = []
    for il in range(n_layer + 1):
        if il < start:
            devices.append(CPU)
            continue
        x = np.float32(il - start) / np.float32(active)
        devices.append(int(np.searchsorted(cumulative, x, side="right")))
    return devices


def experts_on_cpu(layers: Iterable[int]) -> list[tuple[str, str]]:
    """One -ot rule per layer keeping its routed experts on the CPU: how --n-cpu-moe expands, and
    the form llama.cpp's --fit writes."""
    return [(rf"blk\.{il}{EXPS_PATTERN}", "CPU") for il in layers]


def override_for(name: str, overrides: list[tuple[str, str]]) -> str | None:
    """The buffer of the first -ot rule whose pattern is found in ``name`` (llama.cpp's order)."""
    for pattern, buft in overrides:
        if re.search(pattern, name):
            return buft
    return None


def _buft_device(buft: str, names: list[str]) -> int:
    if buft.upper().startswith("CPU"):
        return CPU
    if buft in names:  # CUDA1, or a worker's RPC0[10.0.0.2:50052]
        return names.index(buft)
    raise ValidationError("OVERRIDE_TENSORS", buft, f"no such device here (devices: {', '.join(names) or 'none'})")


def cuda_alloc_bytes(type_name: str, shape: list[int], nbytes: int) -> int:
    """What the CUDA backend allocates for a weight: one row of padding up to a multiple of 512
    elements for quantized types (ggml-cuda's MATRIX_ROW_PADDING), then 128-byte alignment."""
    block, size = BLOCKS_BY_NAME.get(type_name, (1, 0))
    if block > 1 and shape[0] % 512:
        nbytes += (512 - shape[0] % 512) // block * size
    return -(-nbytes // 128) * 128


class DeviceEstimate(BaseModel):
    device: str
    weights_mib: float = 0.0
    kv_cache_mib: float = 0.0
    recurrent_mib: float = 0.0
    compute_mib: float = 0.0
    overhead_mib: float = 0.0
    total_mib: float = 0.0
    capacity_mib: float | None = None
    free_after_mib: float | None = None
    fits: bool | None = None
    uncertainty_mib: float = 0.0
    layers: list[int] = Field(default_factory=list, description="blocks whose layer lives here")


class Estimate(BaseModel):
    model: str
    n_ctx: int
    slots: int
    unified_kv: bool
    devices: list[DeviceEstimate]
    host: DeviceEstimate
    fits: bool | None
    notes: list[str] = Field(default_factory=list)


def estimate(info: GGUFInspection, settings: Settings, gpu_capacity_mib: list[float],
             overhead_mib: float | None = None, *, device_names: list[str] | None = None,
             device_overheads: list[float | None] | None = None) -> Estimate:
    """Predict per-GPU and host memory for ``info`` run with ``settings`` on GPUs of the given sizes.

    ``overhead_mib``: the per-GPU runtime overhead (a calibrated value); None = the default for
    the model's kind. Every GPU in ``gpu_capacity_mib`` is visible to the process.
    ``device_names``: llama.cpp's names for the devices in its order (default CUDA0, CUDA1, ...;
    RPC workers' devices come first, as RPC0[host:port]); ``device_overheads`` replaces
    ``overhead_mib`` per device where not None (an RPC device on a worker's CPU costs far less than
    a CUDA context)."""
    if overhead_mib is None:
        overhead_mib = default_overhead(info)
    n_gpus = len(gpu_capacity_mib)
    notes: list[str] = []
    names = device_names or [f"CUDA{i}" for i in range(n_gpus)]
    devices = [DeviceEstimate(device=names[i], capacity_mib=gpu_capacity_mib[i]) for i in range(n_gpus)]
    host = DeviceEstimate(device="host")
    if n_gpus == 0 or settings.split_mode == "none":
        split = [1.0]
        gpu_ids = [settings.main_gpu] if n_gpus else []
    else:
        split = settings.tensor_split or [c for c in gpu_capacity_mib]
        gpu_ids = list(range(n_gpus))
    if n_gpus and settings.fit and settings.n_gpu_layers < 0 and not settings.tensor_split and not settings.overrides:
        notes.append("fit is on and placement is left to it: this estimate is the placement before fit adjusts it")
    per_layer = layer_devices(info.n_layer, settings.n_gpu_layers if n_gpus else 0, split)
    dev_of_layer = [CPU if d == CPU else gpu_ids[min(d, len(gpu_ids) - 1)] for d in per_layer]
    output_dev = dev_of_layer[-1]

    host_experts: list[int] = []

    def add_weight(dev: int, t_type: str, shape: list[int], nbytes: int, kind: str = "") -> None:
        if dev == CPU:
            host.weights_mib += nbytes / MIB
            if kind == "experts":
                host_experts.append(cuda_alloc_bytes(t_type, shape, nbytes))
        else:
            devices[dev].weights_mib += cuda_alloc_bytes(t_type, shape, nbytes) / MIB

    for t in info.tensors:
        buft = override_for(t.name, settings.overrides)
        if buft is not None:
            dev = _buft_device(buft, names)
        elif t.kind == "embeddings":
            dev = CPU  # the input layer always stays on the CPU
        elif t.kind == "output":
            dev = output_dev
        elif t.layer is not None:
            dev = dev_of_layer[t.layer] if t.layer < info.n_layer else output_dev
        else:
            dev = output_dev
        add_weight(dev, t.type, t.shape, t.bytes, t.kind)
    if info.tied_embeddings and output_dev != CPU:
        embd = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
        if embd is not None:  # the output layer gets its own copy of the embedding matrix
            add_weight(output_dev, embd.type, embd.shape, embd.bytes)

    n_ctx, slots, unified = _kv_geometry(info, settings)
    for il in range(info.n_layer):
        kv, rs = _layer_cache_bytes(info, settings, il, n_ctx, slots, unified)
        dev = CPU if settings.no_kv_offload else dev_of_layer[il]
        target = host if dev == CPU else devices[dev]
        target.kv_cache_mib += kv / MIB
        target.recurrent_mib += rs / MIB
        if dev != CPU and il not in target.layers:
            target.layers.append(il)
    # Pipeline parallelism (llama-context.cpp): several GPUs, every layer on them, split by layer,
    # no tensor overrides: the scheduler keeps 4 copies of each split's inputs.
    pipeline = (len({d for d in dev_of_layer if d != CPU}) > 1 and settings.split_mode == "layer"
                and not settings.overrides and not settings.no_kv_offload and CPU not in dev_of_layer)
    # Op offload: a prompt batch multiplies CPU-resident experts on the GPU, copying the weight
    # into the first GPU's compute buffer; ggml reserves room for the largest such tensor.
    offload_copy = max(host_experts) if host_experts and gpu_ids else 0
    _add_compute(info, settings, devices, host, dev_of_layer, n_ctx, slots, unified, pipeline, offload_copy)
    for i, d in enumerate(devices):
        used = d.weights_mib + d.kv_cache_mib + d.recurrent_mib + d.compute_mib
        own = device_overheads[i] if device_overheads and device_overheads[i] is not None else overhead_mib
        if used > 0 or i in gpu_ids:
            d.overhead_mib = own
        else:
            d.overhead_mib = IDLE_GPU_OVERHEAD_MIB  # visible to the process: it still gets a context
        d.total_mib = round(used + d.overhead_mib, 1)
        # Weights and caches are exact; compute and overhead carry the uncertainty until calibrated.
        d.uncertainty_mib = round(max(0.25 * d.compute_mib + 150.0, 0.03 * d.total_mib), 1) if d.total_mib else 0.0
        d.free_after_mib = round(d.capacity_mib - d.total_mib, 1) if d.capacity_mib is not None else None
        d.fits = d.free_after_mib is not None and d.free_after_mib >= 0
        for name in ("weights_mib", "kv_cache_mib", "recurrent_mib", "compute_mib"):
            setattr(d, name, round(getattr(d, name), 3))
    host.total_mib = round(host.weights_mib + host.kv_cache_mib + host.recurrent_mib + host.compute_mib, 1)
    for name in ("weights_mib", "kv_cache_mib", "recurrent_mib", "compute_mib"):
        setattr(host, name, round(getattr(host, name), 3))
    fits = all(d.fits for d in devices) if devices else None
    return Estimate(model=info.path, n_ctx=n_ctx, slots=slots, unified_kv=unified, devices=devices, host=host,
                    fits=fits, notes=notes)


# --- KV cache and recurrent state -----------------------------------------------------------


def _pad(x: int, n: int) -> int:
    return -(-x // n) * n


def _kv_geometry(info: GGUFInspection, s: Settings) -> tuple[int, int, bool]:
    """(n_ctx as allocated, slots, unified): context padded to 256; per-slot contexts when not unified."""
    requested = s.n_ctx or info.n_ctx_train or 4096
    n_ctx = _pad(requested, 256)
    slots, unified = s.slots, s.unified
    if not unified:
        n_ctx = _pad(n_ctx // slots, 256) * slots
    return n_ctx, slots, unified


def _row_bytes(cache_type: str, elements: int) -> int:
    block, size = KV_TYPES[cache_type]
    return elements // block * size


def _v_row(info: GGUFInspection, il: int) -> int:
    """V elements per token of layer ``il`` (0 for layers without attention and for MLA, K only)."""
    heads_kv = info.n_head_kv[il] if il < len(info.n_head_kv) else 0
    if info.is_mla or heads_kv == 0 or il in info.recurrent_layers:
        return 0
    swa = il in info.swa_layers
    return ((info.value_length_swa if swa and info.value_length_swa else info.value_length) or 0) * heads_kv


def _layer_cache_bytes(info: GGUFInspection, s: Settings, il: int, n_ctx: int, slots: int,
                       unified: bool) -> tuple[int, int]:
    if il in info.recurrent_layers:
        return 0, _recurrent_bytes(info, il, slots)
    heads_kv = info.n_head_kv[il] if il < len(info.n_head_kv) else 0
    if heads_kv == 0:
        return 0, 0
    swa = il in info.swa_layers
    k_len = (info.key_length_swa if swa and info.key_length_swa else info.key_length) or 0
    k_row = k_len * heads_kv
    # Without flash attention V is stored transposed, and every layer's V is as wide as the widest
    # (llama-kv-cache.cpp, TAG_V_CACHE_VARIABLE); "auto" counts as on when the cache is created.
    if s.flash_attn == "off":
        v_row = max((_v_row(info, j) for j in range(info.n_layer)), default=0) if not info.is_mla else 0
    else:
        v_row = _v_row(info, il)
    streams = 1 if unified else slots
    cells = n_ctx if unified else n_ctx // slots
    if swa and not s.swa_full and info.sliding_window:
        n_ubatch = min(s.n_ubatch, s.n_batch, n_ctx)
        cells = _pad(min(cells, info.sliding_window * (slots if unified else 1) + n_ubatch), 256)
    return (_row_bytes(s.cache_type_k, k_row) + _row_bytes(s.cache_type_v, v_row)) * cells * streams, 0


def _recurrent_bytes(info: GGUFInspection, il: int, slots: int) -> int:
    """Conv/shift state r plus recurrent state s, both F32, one row per sequence
    (llama-hparams.cpp n_embd_r / n_embd_s, in the order llama.cpp checks them: RWKV, short
    convolutions (LFM2), then Mamba / Mamba-2 / gated DeltaNet)."""
    arch, meta = info.architecture, info.metadata
    n_embd = info.n_embd or 0
    wkv = meta.get(f"{arch}.wkv.head_size")
    l_cache = meta.get(f"{arch}.shortconv.l_cache")
    conv = meta.get(f"{arch}.ssm.conv_kernel")
    inner = meta.get(f"{arch}.ssm.inner_size")
    state = meta.get(f"{arch}.ssm.state_size") or 0
    groups = meta.get(f"{arch}.ssm.group_count", 0) or 0
    if wkv:
        r, s_ = int(meta.get(f"{arch}.token_shift_count", 2)) * n_embd, n_embd * wkv
    elif l_cache:
        r, s_ = n_embd * (l_cache - 1), 0
    elif conv and inner:
        r, s_ = (conv - 1) * (inner + 2 * groups * state), state * inner
    else:
        return 0
    return 4 * (r + s_) * max(1, slots)


# --- compute buffers (approximate) ----------------------------------------------------------


def _add_compute(info: GGUFInspection, s: Settings, devices: list[DeviceEstimate], host: DeviceEstimate,
                 dev_of_layer: list[int], n_ctx: int, slots: int, unified: bool, pipeline: bool,
                 offload_copy: int) -> None:
    """Structural approximation of ggml's compute-buffer plan (vram-estimation notes, section 4.2),
    with the terms the H200 matrix showed (docs/gpu-validation/estimator.md); calibration corrects it."""
    t = min(n_ctx, s.n_batch, s.n_ubatch)
    n_embd = info.n_embd or 0
    heads = max(info.n_head) if info.n_head else 0
    head_dim = info.key_length or 0
    ff = max(int(info.metadata.get(f"{info.architecture}.feed_forward_length", 0) or 0)
             if not isinstance(info.metadata.get(f"{info.architecture}.feed_forward_length"), list)
             else max(info.metadata[f"{info.architecture}.feed_forward_length"]), 0)
    if info.expert_count:
        ff_exp = int(info.metadata.get(f"{info.architecture}.expert_feed_forward_length", ff) or ff)
        ff = max(ff, info.expert_used_count * ff_exp)
    fa = s.flash_attn != "off"
    # The KQ mask spans the cells one sequence stream can see: all of them with a unified cache.
    cells = n_ctx if unified else n_ctx // max(slots, 1)
    mask = t * cells * (2 if fa else 4)
    layer_peak = 4 * t * (3 * n_embd + 3 * ff + 2 * heads * head_dim) + (0 if fa else 4 * cells * t * heads)
    # Flash attention on a quantized cache converts the layer's K and V to F16 first.
    quantized = s.cache_type_k not in ("f16", "f32", "bf16") or s.cache_type_v not in ("f16", "f32", "bf16")
    dequant = 0
    if fa and quantized:
        k_row = max((info.key_length or 0) * max(info.n_head_kv or [0]), info.kv_lora_rank or 0)
        v_row = 0 if info.is_mla else (info.value_length or 0) * max(info.n_head_kv or [0])
        dequant = 2 * cells * (k_row + v_row)
    out_rows = min(t, slots)
    output = 4 * (info.n_vocab or 0) * out_rows + 4 * n_embd * t
    used = sorted({d for d in dev_of_layer if d != CPU})
    for i, d in enumerate(used):
        is_output = dev_of_layer[-1] == d
        peak = max(layer_peak, output if is_output else 0, dequant, offload_copy if i == 0 else 0)
        extra = 0
        if pipeline:  # 3 more copies of the split's inputs (mask, embeddings); one more on the first GPU
            extra = (4 if i == 0 else 3) * mask + 16 * MIB
        devices[d].compute_mib += (mask + 4 * n_embd * t + peak + extra) / MIB
    cpu_layers = any(d == CPU for d in dev_of_layer[:-1])
    host.compute_mib += (mask + 4 * n_embd * t + (layer_peak if cpu_layers or not used else 0)) / MIB
    if dev_of_layer[-1] == CPU:
        host.compute_mib += output / MIB
