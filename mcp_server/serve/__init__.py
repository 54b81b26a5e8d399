"""``llama-pilot serve``: one OpenAI- and Anthropic-compatible endpoint for every profile.

``policy`` reads what models.conf says about serving (aliases, pins, priorities, TTLs, the port),
``memory`` decides by estimate whether a profile fits beside what is resident and what to unload
if not, ``scheduler`` owns the queues and the loads, ``proxy`` is the ASGI app, and ``control``
starts, finds and asks a running endpoint (the CLI, the MCP tools and the dashboard use it).
"""
