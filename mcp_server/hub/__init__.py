"""Hugging Face onboarding: the hub's API as llama-pilot needs it (``client``) and a repo's GGUF
files grouped into quant sets (``quants``). Only a repo id and file names from a listing ever
reach a URL: no arbitrary address is fetched."""
