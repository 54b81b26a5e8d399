"""Post-processing of model answers: reasoning tags, code fences, evalplus's sanitiser."""

from __future__ import annotations

import pytest

from mcp_server.bench.postprocess import extract_code, postprocess, strip_reasoning

from .conftest import need


@pytest.fixture
def sanitiser() -> None:
    try:
        import evalplus.sanitize  # noqa: F401
    except ImportError:
        need(False, "evalplus", "pip install 'llama-pilot[bench]'")

PROBLEM = {
    "task_id": "HumanEval/0",
    "entry_point": "add",
    "prompt": 'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n',
}


def test_think_block_is_removed():
    text, changed = strip_reasoning("<think>\nlet me think\n```python\nwrong\n```\n</think>\nAnswer:\n```python\nx = 1\n```")
    assert changed and "let me think" not in text and "wrong" not in text and "x = 1" in text


def test_mistral_think_block_is_removed_any_case():
    text, changed = strip_reasoning("[THINK]plan: use a loop[/THINK]\ndef f():\n    return 1\n")
    assert changed and text.startswith("def f()")
    text, _ = strip_reasoning("<THINK>a</Think>b")
    assert text == "b"


def test_reasoning_opened_in_the_prompt_and_unclosed_reasoning():
    # the template opened <think> inside the prompt: only the closing tag is in the answer
    assert strip_reasoning("still thinking...</think>\nresult")[0] == "result"
    # the answer ran out of tokens while thinking: nothing after the tag is usable
    assert strip_reasoning("prefix <think> never finished")[0] == "prefix"


def test_gpt_oss_channels_keep_the_final_channel():
    raw = ("<|channel|>analysis<|message|>think hard<|end|><|start|>assistant<|channel|>final<|message|>"
           "```python\ndef add(a, b):\n    return a + b\n```<|return|>")
    code, how, _ = extract_code(strip_reasoning(raw)[0], "add")
    assert how == "fence" and "think hard" not in code and "return a + b" in code


def test_no_code_fence_drops_leading_prose():
    code, how, blocks = extract_code("Sure! Here it is:\nimport math\ndef add(a, b):\n    return a + b\n", "add")
    assert how == "prose-dropped" and blocks == 0 and code.startswith("import math")


def test_no_fence_no_code_start_is_kept_as_is():
    code, how, _ = extract_code("    return a + b\n", "add")
    assert how == "as-is" and code == "    return a + b\n"


def test_multiple_blocks_prefer_the_one_defining_the_entry_point():
    raw = ("First a helper test:\n```python\nassert add(1, 2) == 3\nassert add(2, 2) == 4\nprint('a long test block')\n```\n"
           "Solution:\n```python\ndef add(a, b):\n    return a + b\n```\n"
           "Shell:\n```bash\necho a much longer block that is not python at all, really long\n```\n")
    code, how, blocks = extract_code(raw, "add")
    assert blocks == 3 and how == "fence" and code == "def add(a, b):\n    return a + b"


def test_multiple_blocks_without_entry_point_take_the_largest_python_block():
    raw = "```python\nx = 1\n```\ntext\n```py\ny = 2\nz = 3\n```\n```text\n" + "w" * 200 + "\n```"
    code, _, blocks = extract_code(raw, "nothere")
    assert blocks == 3 and code == "y = 2\nz = 3"


def test_truncated_answer_with_an_open_fence():
    code, how, blocks = extract_code("Here:\n```python\ndef add(a, b):\n    return a +", "add")
    assert how == "open-fence" and blocks == 1 and code.startswith("def add")


@pytest.mark.parametrize("raw", [
    "<think>The user wants addition.</think>\n```python\ndef add(a: int, b: int) -> int:\n    return a + b\n\nprint(add(1, 2))\n```",
    "[THINK]addition[/THINK]Here you go:\n\ndef add(a: int, b: int) -> int:\n    return a + b\n",
])
def test_full_pipeline_with_evalplus_sanitiser(raw, sanitiser):
    result = postprocess(raw, PROBLEM)
    assert result.reasoning_stripped
    assert result.solution.strip() == "def add(a: int, b: int) -> int:\n    return a + b"  # print() dropped by evalplus


def test_body_only_answer_gets_the_prompt_in_front(sanitiser):
    result = postprocess("```python\n    return a + b\n```", PROBLEM)
    assert result.prompt_prepended
    assert result.solution.startswith("def add(a: int, b: int) -> int:") and "return a + b" in result.solution


def test_empty_and_reasoning_only_answers_give_an_empty_solution(sanitiser):
    assert postprocess("", PROBLEM).solution == ""
    assert postprocess("<think>only thoughts, no answer", PROBLEM).solution == ""
