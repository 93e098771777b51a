"""The prompt-token convention the vLLM emulator counts by and the load generator sizes prompts by.

The emulator has no tokenizer; it counts a prompt text as ``ceil(utf8 bytes / BYTES_PER_TOKEN)``
tokens and adds ``CHAT_TOKENS_PER_MESSAGE`` per chat message (see ``sim.openai_wire``). The
arrival generator builds prompt texts of exactly ``n * BYTES_PER_TOKEN`` bytes
(``schemas.arrivals.prompt_text``), and the load generator takes the per-message overhead off
before it builds a chat prompt, so a request the workload says has ``n`` prompt tokens is counted
as ``n`` by the emulator. Both sides read the numbers from here, so they cannot drift apart.
"""

from __future__ import annotations

#: Bytes of prompt text per token: a rough English/BPE average (the admitter's estimate is
#: calibrated separately).
BYTES_PER_TOKEN = 4
#: Template overhead per chat message (``<|start_header_id|>role<|end_header_id|>`` ... ``<|eot_id|>``).
CHAT_TOKENS_PER_MESSAGE = 4
