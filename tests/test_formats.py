"""Answer formats and their grammars: what the model may write is valid by construction.

The grammars are fuzzed: a character-level random walk through each grammar (xgrammar says which
characters may come next) yields strings the grammar accepts, and every one of them must be valid
Python of its kind. Then real generations with the tiny-random model in every role.
"""

from __future__ import annotations

import ast
import random

import pytest
import torch
import xgrammar as xgr

from azr import grammars, prompts, task_types
from azr.config import ModelConfig, SamplingConfig
from azr.formats import FENCE, answer_format
from azr.generation import HFBackend, generate
from azr.model import load_model

CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
# Most of the time the walk takes the first allowed character of this list: they close what is open
# (brackets, strings, lines, blocks) or start the shortest things (a digit, `return`), so walks finish.
FINISHING = "'\")]}\n`0123456789:r"


def accepted_strings(grammar: str, count: int, seed: int, max_chars: int = 600) -> list[str]:
    """`count` strings the grammar accepts, from a random walk over one-character tokens."""
    info = xgr.TokenizerInfo(CHARS)
    compiled = xgr.GrammarCompiler(info).compile_grammar(grammar)
    rng = random.Random(seed)
    found, attempts = [], 0
    while len(found) < count and attempts < count * 20:
        attempts += 1
        matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        bitmask = xgr.allocate_token_bitmask(1, len(CHARS))
        text = ""
        while not matcher.is_terminated() and len(text) < max_chars:
            matcher.fill_next_token_bitmask(bitmask)
            words = bitmask[0].tolist()
            allowed = [i for i in range(len(CHARS)) if words[i >> 5] >> (i & 31) & 1]
            finishing = sorted((FINISHING.index(CHARS[i]), i) for i in allowed if CHARS[i] in FINISHING)
            choice = finishing[0][1] if finishing and rng.random() < 0.6 else rng.choice(allowed)
            assert matcher.accept_token(choice)
            text += CHARS[choice]
        if matcher.is_terminated():
            found.append(text)
    assert len(found) == count, f"only {len(found)} of {count} walks finished"
    return found


def literal_value(node: ast.expr):
    """The value of a literal node (ast.literal_eval's rule, plus set())."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "set" and not node.args:
        return set()
    return ast.literal_eval(node)


@pytest.mark.parametrize("parameters", [("s",), ("nums", "k"), ("x", "y", "z")])
def test_every_body_the_grammar_accepts_compiles_and_reads_only_known_names(parameters) -> None:
    known = set(parameters) | set(grammars.LOCALS) | set(grammars.BUILTINS) | {"True", "False", "None"}
    for text in accepted_strings(grammars.body_grammar(parameters), 40, seed=len(parameters)):
        assert text.endswith("\n" + FENCE)
        source = f"def f({', '.join(parameters)}):\n" + text.removesuffix(FENCE)
        compile(source, "<program>", "exec")  # stricter than ast.parse: break outside a loop, say
        tree = ast.parse(source)
        assert [node.name for node in tree.body] == ["f"]
        assert isinstance(tree.body[0].body[-1], ast.Return)
        assert not any(isinstance(node, (ast.Import, ast.ImportFrom, ast.While, ast.Lambda)) for node in ast.walk(tree))
        assert {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} <= known


@pytest.mark.parametrize("arity", [1, 2, 3, 4, None])
def test_signatures_have_distinct_parameters_and_the_arity(arity) -> None:
    arities = set()
    for text in accepted_strings(grammars.signature_grammar(arity), 40, seed=arity or 0):
        assert text.endswith("):\n")
        parameters = grammars.signature_parameters(text)
        assert parameters is not None and len(set(parameters)) == len(parameters)
        arities.add(len(parameters))
    assert arities == {arity} if arity else (arities <= {1, 2, 3} and len(arities) > 1)


def test_every_literal_the_grammar_accepts_is_a_literal() -> None:
    for text in accepted_strings(grammars.literal_grammar(), 200, seed=2):
        assert text.endswith("\n" + FENCE)
        literal_value(ast.parse(text.removesuffix("\n" + FENCE), mode="eval").body)


@pytest.mark.parametrize("arity", [1, 2, 3])
def test_argument_lists_have_exactly_the_arity(arity: int) -> None:
    for text in accepted_strings(grammars.arguments_grammar(arity), 60, seed=arity):
        call = ast.parse("f(" + text.removesuffix("\n" + FENCE) + ")", mode="eval").body
        assert len(call.args) == arity and not call.keywords
        for argument in call.args:
            literal_value(argument)


def test_messages_are_one_line_without_backticks() -> None:
    for text in accepted_strings(grammars.message_grammar(), 50, seed=4, max_chars=200):
        line = text.removesuffix("\n" + FENCE)
        assert line and "\n" not in line and "`" not in line


def test_parameter_count_reads_the_signature() -> None:
    assert grammars.parameter_count("def f(a, b=2):\n    return a") == 2
    assert grammars.parameter_count("def g(*xs):\n    return xs") == 1
    assert grammars.parameter_count("def f():\n    return 1") == 0
    assert grammars.parameter_count("x = 1") is None
    assert grammars.parameter_count("def f(") is None


def test_format_steps_for_a_deduction_proposal() -> None:
    fmt = answer_format("grammar", "propose", "deduction")
    first = fmt.next_step([])
    assert first.scaffold == "<answer>\n```python\ndef f(" and first.field.grammar == grammars.signature_grammar()
    second = fmt.next_step(["nums, k):\n"])
    assert second.scaffold == "" and second.field.grammar == grammars.body_grammar(("nums", "k"))
    third = fmt.next_step(["nums, k):\n", "    return nums[k]\n```"])
    assert third.scaffold == "\n```input\n" and third.field.grammar == grammars.arguments_grammar(2)
    last = fmt.next_step(["nums, k):\n", "    return nums[k]\n```", "[1, 2], 1\n```"])
    assert last.scaffold == "\n</answer>" and last.field is None
    # A body cut off by the token limit: its fence is closed and the input follows, as the program stands.
    cut = fmt.next_step(["nums, k):\n", "    return nums["], truncated=True)
    assert cut.scaffold == "\n```\n```input\n" and cut.field.grammar == grammars.arguments_grammar(2)
    # A signature cut off has no body to follow: the answer is closed as it stands.
    cut = fmt.next_step(["nums, "], truncated=True)
    assert cut.scaffold == "\n```\n</answer>" and cut.field is None


def test_prefill_has_the_scaffold_but_no_grammar() -> None:
    fmt = answer_format("prefill", "solve", "abduction", arity=2)
    step = fmt.next_step([])
    assert step.scaffold == "<answer>\n```input\n" and step.field.grammar is None and step.field.stop == (FENCE,)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return load_model(ModelConfig(name_or_path="tiny-random", cache_dir=str(tmp_path_factory.mktemp("models"))))


ROLES = [("propose", "deduction", None), ("propose", "abduction", None), ("propose", "induction", 2),
         ("solve", "deduction", None), ("solve", "abduction", 2), ("solve", "induction", 1)]


@pytest.mark.parametrize("role, task_type, arity", ROLES)
def test_grammar_answers_parse_strictly_and_mark_the_scaffold(tiny, role, task_type, arity) -> None:
    model, tokenizer = tiny
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=250, batch_size=4)
    fmt = answer_format("grammar", role, task_type, arity=arity, n_inputs=3)
    rendered = [prompts.render_chat(tokenizer, f"{role} a {task_type} task, {i}") for i in range(4)]
    for gen in generate(HFBackend(model, tokenizer, sampling), tokenizer, rendered, [fmt] * 4, sampling, seed=11):
        assert len(gen.response_ids) == len(gen.response_mask) == len(gen.logprobs)
        ours = [t for t, mine in zip(gen.response_ids, gen.response_mask) if not mine]
        assert tokenizer.decode(ours).startswith("<answer>\n```") and gen.text.endswith("</answer>")
        assert all(lp == 0.0 for lp, mine in zip(gen.logprobs, gen.response_mask) if not mine)
        assert all(lp < 0.0 for lp, mine in zip(gen.logprobs, gen.response_mask) if mine)
        if gen.finish_reason != "stop":
            continue  # a field ran out of tokens: well formed, but its content is cut
        if role == "propose":
            parsed = task_types.get(task_type).parse_proposal(gen.text, True, 3)
            assert parsed.ok, (parsed.reason, gen.text)
            inputs = parsed.inputs if task_type == "induction" else [parsed.input]
            expected = arity or grammars.parameter_count(parsed.program)
            assert all(grammars.argument_count(text) == expected for text in inputs)
        else:
            parsed = task_types.get(task_type).parse_answer(gen.text, True)
            assert parsed.ok, (parsed.reason, gen.text)


def test_free_answers_are_all_the_models(tiny) -> None:
    model, tokenizer = tiny
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=20, batch_size=2, stop_strings=[])
    fmt = answer_format("free", "solve", "deduction", stop_strings=(), max_new_tokens=20)
    gen = generate(HFBackend(model, tokenizer, sampling), tokenizer, ["hello"], [fmt], sampling, seed=1)[0]
    assert all(gen.response_mask) and len(gen.response_mask) == len(gen.response_ids) == 20


def test_program_sizes_are_bounded():
    """A real SmolLM2 program nested `key[key[key[...]]]` until it ran out of tokens."""
    info = xgr.TokenizerInfo(CHARS)
    compiled = xgr.GrammarCompiler(info).compile_grammar(grammars.body_grammar(("s",)))

    def accepts(text: str) -> bool:
        return xgr.GrammarMatcher(compiled, terminate_without_stop_token=True).accept_string(text)

    assert accepts("    return s[s[1]]\n```")
    assert not accepts("    return s[s[s[1]]]\n```")
    assert not accepts("    return s + s + s + s\n```")  # three terms at most
    assert accepts("    r = 1\n" * 4 + "    return r\n```")
    assert not accepts("    r = 1\n" * 5 + "    return r\n```")
    assert not accepts("    return k\n```")  # not a parameter of this signature, nor a local
