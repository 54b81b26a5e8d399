"""ggml tensor types: how many elements a block holds and how many bytes it takes.

The one table of type sizes: tensor sizes in a GGUF (the layout reader), CUDA row padding and KV
cache rows (the placement estimate) all come from it. llama.cpp's *file* types
(``general.file_type``, ``local.FILE_TYPES``) are another numbering and another table.
"""

from __future__ import annotations

from mcp_server.errors import GGUFFormatError

# ggml type id -> (name, elements per block, bytes per block), as in this llama.cpp build's ggml.c.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}

# The same sizes by type name ("Q8_0"), which is how tensor infos and cache types name them.
BLOCKS_BY_NAME: dict[str, tuple[int, int]] = {name: (block, size) for name, block, size in GGML_TYPES.values()}


def tensor_bytes(type_id: int, shape: list[int]) -> int:
    """Bytes of a tensor of ggml type ``type_id`` and ``shape`` (ggml order: row length first)."""
    if type_id not in GGML_TYPES:
        raise GGUFFormatError(f"tensor type {type_id} is unknown to this reader")
    name, block, size = GGML_TYPES[type_id]
    if shape[0] % block:
        raise GGUFFormatError(f"a {name} row of {shape[0]} elements is not a whole number of {block}-element blocks")
    n = shape[0] // block * size
    for dim in shape[1:]:
        n *= dim
    return n
