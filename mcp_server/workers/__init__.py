"""Workers: other machines lending their devices to one llama-server through llama.cpp's RPC backend.

On each worker host, ``llama-pilot worker serve`` runs the agent (:mod:`.agent`): llama-pilot's MCP
server over HTTP behind a bearer token, plus tools that own that host's ``ggml-rpc-server``
(:mod:`.rpc`). On the machine that runs the model, ``[global]`` names the workers (:mod:`.spec`), a
profile lists the ones it uses (``WORKERS=box2``), and :mod:`.operations` brings their RPC servers
up before llama-server starts with ``--rpc`` and takes them down after. The agent and the RPC port
bind only to loopback or to one named private address (:mod:`.addresses`): the RPC protocol has no
authentication, so the network path must be private (an SSH tunnel or WireGuard).
"""
