"""From a model's raw answer to the code evalplus tests, in the original pipeline's order:

1. strip reasoning: ``<think>...</think>`` and ``[THINK]...[/THINK]`` blocks (any case, across
   lines); a closing tag with no opening one (the chat template opened the block inside the
   prompt) drops everything before it; an opening tag never closed (the model ran out of tokens
   while thinking) drops everything after it. GPT-OSS's channels keep only the final channel.
2. take the code: with fenced blocks, the largest Python (or untagged) block, preferring blocks that
   define the entry point; a last fence left open by a truncated answer counts as a block up to the
   end. Without fences, leading prose before the first ``import``/``from``/``def``/``class``/``@``
   line is dropped. Otherwise the text is kept as it is.
3. if the code never defines the entry point (the model answered with the body only), the problem's
   prompt (signature and docstring) is put in front of it, as the original's Claude path did.
4. evalplus's own sanitiser (``evalplus.sanitize.sanitize``) with the entry point, as
   ``evalplus.codegen`` does: keeps imports and the definitions the entry point needs.

The raw answer is always kept beside the result (``raw.jsonl`` in the run folder).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from mcp_server.bench import BenchError

_REASONING_TAGS = ((r"<think>", r"</think>"), (r"\[THINK\]", r"\[/THINK\]"))
_HARMONY_FINAL = "<|channel|>final<|message|>"
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.S)
_OPEN_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*)\Z", re.S)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_CODE_START_RE = re.compile(r"^(import |from |def |class |@)", re.M)


class PostResult(BaseModel):
    solution: str
    reasoning_stripped: bool
    extraction: str  # "fence" | "open-fence" | "prose-dropped" | "as-is" | "empty"
    blocks: int
    prompt_prepended: bool
    sanitized: bool


def strip_reasoning(text: str) -> tuple[str, bool]:
    """Remove reasoning blocks; returns (text, whether anything was removed)."""
    out = text
    if _HARMONY_FINAL in out:
        out = out.rsplit(_HARMONY_FINAL, 1)[1]
        out = re.sub(r"<\|(end|return)\|>.*\Z", "", out, flags=re.S)
    for open_tag, close_tag in _REASONING_TAGS:
        out = re.sub(f"{open_tag}.*?{close_tag}", "", out, flags=re.S | re.I)
        closes = list(re.finditer(close_tag, out, flags=re.I))
        if closes:  # closed but never opened here: the block began in the prompt
            out = out[closes[-1].end():]
        opened = re.search(open_tag, out, flags=re.I)
        if opened:  # opened but never closed: the answer ended inside its reasoning
            out = out[:opened.start()]
    return (out.strip(), True) if out != text else (text, False)


def _defines(code: str, entry_point: str | None) -> bool:
    return bool(entry_point) and re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point or '')}\s*\(",
                                           code, flags=re.M) is not None


def extract_code(text: str, entry_point: str | None = None) -> tuple[str, str, int]:
    """(code, how it was found, number of fenced blocks)."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]
    how = "fence"
    rest = _FENCE_RE.sub("", text)
    open_fence = _OPEN_FENCE_RE.search(rest)
    if open_fence:
        blocks.append((open_fence.group(1).lower(), open_fence.group(2)))
        if len(blocks) == 1:
            how = "open-fence"
    if blocks:
        python = [code for tag, code in blocks if tag in _PYTHON_TAGS] or [code for _, code in blocks]
        preferred = [code for code in python if _defines(code, entry_point)] or python
        return max(preferred, key=len).strip("\n"), how, len(blocks)
    if not text.strip():
        return "", "empty", 0
    start = _CODE_START_RE.search(text)
    if start and start.start() > 0:
        return text[start.start():], "prose-dropped", 0
    return text, "as-is", 0


def sanitize(code: str, entry_point: str | None) -> str:
    """evalplus's own sanitiser (tree-sitter based)."""
    try:
        from evalplus.sanitize import sanitize as evalplus_sanitize
    except ImportError as exc:
        raise BenchError("evalplus is not installed: pip install 'llama-pilot[bench]' "
                         "(or pip install evalplus)") from exc
    return evalplus_sanitize(code, entrypoint=entry_point)


def postprocess(raw: str, problem: dict[str, Any], *, use_sanitizer: bool = True) -> PostResult:
    """Raw model answer -> the solution evalplus evaluates."""
    entry = problem.get("entry_point")
    text, stripped = strip_reasoning(raw or "")
    code, how, nblocks = extract_code(text, entry)
    prepended = False
    if code.strip() and entry and not _defines(code, entry):
        code = problem["prompt"] + code
        prepended = True
    solution = code
    sanitized = False
    if use_sanitizer and code.strip():
        cleaned = sanitize(code, entry)
        sanitized = cleaned != code
        solution = cleaned
    return PostResult(solution=solution, reasoning_stripped=stripped, extraction=how, blocks=nblocks,
                      prompt_prepended=prepended, sanitized=sanitized)
