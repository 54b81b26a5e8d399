"""llama-pilot: run, place, switch, watch and benchmark llama.cpp models, driven through MCP.

The package is a core library (profiles, engine, runtime, monitoring, placement, benchmarks);
``cli`` and ``server`` are thin front doors over it.
"""

__version__ = "0.1.0"
