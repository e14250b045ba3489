"""Structured output: every finished constrained row matches its constraint (re.fullmatch, jsonschema), the device
mask equals outlines-core's own index walked in Python, and constraints keep the invariance promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import jsonschema
import numpy as np
import pydantic
import pytest
import tokenizers
from outlines_core import Index, Vocabulary

from gpt_jax import PromptLookup
from gpt_jax.decoding.constraints import device
from gpt_jax.decoding.constraints.automaton import SENTINEL, SENTINEL_LEAD, compile_automaton, special_ids
from gpt_jax.decoding.constraints.spec import row_constraints
from gpt_jax.decoding.generator import Generator
from gpt_jax.errors import ConstraintError
from gpt_jax.model.presets import GPT2_TINY
from gpt_jax.text.hf_tokenizer import HFTokenizer
from tests.conftest import run_cli

ROWS = 24  # seeds sampled per constraint, in one batch (row_seeds)


@pytest.fixture(scope="module")
def byte_level(corpus_slice, tmp_path_factory):
    """A byte-level BPE (tokenizer.json) and a random-weight GPT-2-shaped model over it."""
    d = tmp_path_factory.mktemp("bytelevel")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train([str(corpus_slice)], vocab_size=400, min_frequency=2, special_tokens=["<|end|>"])
    bpe.save(str(d / "tokenizer.json"))
    cfg = GPT2_TINY.replace(vocab_size=bpe.get_vocab_size(), bos_id=-1, eos_ids=(0,), pad_id=0)
    tok = HFTokenizer.from_directory(d, cfg)
    return Generator.from_config(cfg, tok, key=3)


@pytest.fixture(scope="module")
def sentencepiece(small_tokenizer):
    """The 320-piece SentencePiece BPE with byte fallback and a random-weight model over it."""
    t = small_tokenizer
    cfg = GPT2_TINY.replace(vocab_size=t.vocab_size, bos_id=t.bos_id, eos_ids=(t.eos_id,), pad_id=t.pad_id)
    return Generator.from_config(cfg, t, key=4)


def sampled(gen, prompt, n_tokens=48, least=ROWS // 2, **constraint):
    """ROWS samples at temperature 1 (one per row seed) and the finished ones' texts and ids."""
    out = gen.generate([prompt] * ROWS, max_new_tokens=n_tokens, temperature=1.0, top_p=1.0, seed=11,
                       row_seeds=list(range(ROWS)), **constraint)  # fmt: skip
    done = [(t, ids) for t, ids, f in zip(out.texts, out.token_ids, out.finish_reasons) if f in ("stop", "eos")]
    assert len(done) >= least, out.finish_reasons  # most rows finish: the constraint leads them to the end
    return done


def accepts(automaton, ids) -> bool:
    """Does the host automaton (from the device arrays) take `ids` to an accepting state?"""
    state = 0
    for t in ids:
        if t not in set(automaton.allowed_ids(state).tolist()):
            return False
        state = automaton.next_state(state, t)
    return bool(automaton.accepting[state])


REGEXES = {
    "date": r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    "email": r"[a-z]{1,8}(\.[a-z]{1,5})?@[a-z]{2,8}\.(com|org|net)",
    "number": r"-?(0|[1-9]\d{0,5})(\.\d{1,3})?",
    "shared prefixes": r"(the|thee|then|there|these) (king|kingdom|kin)",
    "across tokens": r"(Romeo|Juliet) and (Romeo|Juliet|Rome)!",
}


@pytest.mark.parametrize("name", list(REGEXES))
@pytest.mark.parametrize("vocab", ["byte_level", "sentencepiece"])
def test_every_finished_sample_fully_matches_its_regex(name, vocab, request):
    gen = request.getfixturevalue(vocab)
    regex = REGEXES[name]
    automaton = compile_automaton(regex, gen.tokenizer, gen.config.eos_ids)
    for text, ids in sampled(gen, "The", regex=regex):
        assert re.fullmatch(regex, text, re.ASCII), text
        body = [t for t in ids if t not in gen.config.eos_ids]
        assert accepts(automaton, body)
        if vocab == "byte_level":  # no dummy prefix: the text re-encodes on its own
            assert accepts(automaton, gen.tokenizer.encode(text, add_special_tokens=False)), text


def test_a_regex_whose_text_crosses_byte_level_token_boundaries(byte_level):
    """"Romeo and Juliet!" is several byte-level tokens, none aligned with the regex's pieces; samples use merges
    that cross the boundaries of "and" and the names."""
    regex = REGEXES["across tokens"]
    pieces = {tuple(ids) for _, ids in sampled(byte_level, "The", regex=regex)}
    tok = byte_level.tokenizer
    multi = [p for p in pieces if any(len(tok.token_bytes(i)) > 1 for i in p)]
    assert multi, pieces  # merged tokens are taken, not only single bytes
    assert len(pieces) > 1


def test_a_repeated_group_may_go_on_after_a_full_match(byte_level):
    """(ab)+ takes "abab", not only "ab" (the library's index alone stops at the first full match)."""
    tok = byte_level.tokenizer
    automaton = compile_automaton("(ab|cd)+", tok, byte_level.config.eos_ids)
    for text in ("ab", "abab", "cdabcd"):
        assert accepts(automaton, [tok.encode(ch, add_special_tokens=False)[0] for ch in text]), text
    assert not accepts(automaton, [tok.encode(ch, add_special_tokens=False)[0] for ch in "aba"])
    texts = [t for t, _ in sampled(byte_level, "x", n_tokens=24, least=0, regex="(ab|cd)+!")]
    assert any(len(t) > 3 for t in texts) and all(re.fullmatch("(ab|cd)+!", t) for t in texts)


def test_choices_give_one_of_the_strings(sentencepiece):
    options = ["Montague", "Capulet", "Mont", "Friar Laurence", "Café ☃"]
    texts = [t for t, _ in sampled(sentencepiece, "Who?", choice=options)]
    assert set(texts) <= set(options)
    assert len(set(texts)) >= 3  # sampling reaches several of them


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=10)
    age: int
    tags: list[str] = pydantic.Field(max_length=2)


SCHEMAS = {
    "nested objects": {
        "type": "object",
        "properties": {
            "who": {"type": "object", "properties": {"first": {"type": "string", "maxLength": 6},
                                                      "last": {"type": "string", "maxLength": 6}},
                    "required": ["first", "last"]},
            "ok": {"type": "boolean"},
        },
        "required": ["who", "ok"],
    },
    "array with min and max items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
    "enum": {"type": "object", "properties": {"house": {"enum": ["Montague", "Capulet", 3, None]}},
             "required": ["house"]},
    "required and optional": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 4}, "c": {"type": "null"}},
        "required": ["a"],
    },
    "string with pattern": {"type": "object",
                            "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"}},
                            "required": ["code"]},
    "formats": {"type": "object", "properties": {"day": {"type": "string", "format": "date"},
                                                  "id": {"type": "string", "format": "uuid"}},
                "required": ["day", "id"]},
    "$ref": {
        "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                           "kids": {"type": "array", "items": {"$ref": "#/$defs/node"},
                                                                    "maxItems": 2}},
                           "required": ["v"]}},
        "$ref": "#/$defs/node",
    },
    "anyOf": {"type": "object", "properties": {"x": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3},
                                                                {"type": "array", "items": {"type": "boolean"},
                                                                 "maxItems": 2}]}},
              "required": ["x"]},
    "numbers with bounds": {"type": "object",
                            "properties": {"age": {"type": "integer", "minimum": 18, "exclusiveMaximum": 121},
                                           "score": {"type": "number", "exclusiveMinimum": -1.5, "maximum": 0.75},
                                           "temps": {"type": "array", "items": {"type": "number", "minimum": -40,
                                                                                "maximum": 50}, "maxItems": 3}},
                            "required": ["age", "score", "temps"]},
    "const and number": {"type": "object", "properties": {"kind": {"const": "play"}, "score": {"type": "number"}},
                         "required": ["kind", "score"]},
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_finished_sample_is_valid_json_under_its_schema(name, byte_level):
    schema = SCHEMAS[name]
    checker = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for text, _ in sampled(byte_level, "{", n_tokens=96, json_schema=schema):
        value = json.loads(text)
        checker.validate(value)
        assert not re.search(r"\s", re.sub(r'"(\\.|[^"\\])*"', '""', text)), text  # compact: no whitespace


def test_pydantic_models_and_json_objects(sentencepiece):
    for text, _ in sampled(sentencepiece, "Person:", n_tokens=96, json_schema=Person):
        Person.model_validate_json(text)
    objects = sampled(sentencepiece, "{", n_tokens=120, least=ROWS // 4, json_object=True)
    for text, _ in objects:
        assert isinstance(json.loads(text), dict)


def test_the_device_mask_equals_the_librarys_own_index_at_every_step(byte_level):
    """Along sampled runs, the allowed set `device.allowed` computes from the stacked arrays equals outlines-core's
    `Index.get_allowed_tokens` for the state its `get_next_state` reaches (EOS added in final states)."""
    gen, tok = byte_level, byte_level.tokenizer
    eos, sentinel = gen.config.eos_ids[0], tok.vocab_size  # the sentinel after the regex: see automaton.py
    skip = special_ids(tok, gen.config.eos_ids)
    by_bytes = {SENTINEL.encode(): [sentinel]}
    for i in range(tok.vocab_size):
        if tok.token_bytes(i) and i not in skip and SENTINEL_LEAD not in tok.token_bytes(i):
            by_bytes.setdefault(tok.token_bytes(i), []).append(i)
    regexes = [REGEXES["email"], row_constraints(1, json_schema=SCHEMAS["anyOf"])[0].regex, "(ab|ba)+!?"]
    automata = [compile_automaton(r, tok, gen.config.eos_ids) for r in regexes]
    table, starts = device.stack(automata, tok.vocab_size)
    table = jax.tree.map(jnp.asarray, table)
    allowed = jax.jit(lambda s: device.allowed(table, s, jnp.array([eos]), tok.vocab_size))
    follow = jax.jit(lambda s, t: device.follow(table, s, t))
    for regex, start in zip(regexes, starts):
        index = Index(f"(?:{regex}){SENTINEL}", Vocabulary(tok.vocab_size + 1, by_bytes))
        out = gen.generate(["x"] * 6, max_new_tokens=40, temperature=1.0, seed=5, row_seeds=list(range(6)), regex=regex)
        for ids in out.token_ids:
            lib, state = index.get_initial_state(), jnp.array([start])
            for t in ids:
                mask = np.asarray(allowed(state))[0]
                lib_allowed = set(index.get_allowed_tokens(lib))
                ends = sentinel in lib_allowed and index.is_final_state(index.get_next_state(lib, sentinel))
                expected = (lib_allowed - {sentinel}) | ({eos} if ends else set())
                assert set(np.flatnonzero(mask).tolist()) == expected, (regex, ids)
                if t == eos:
                    break
                lib, state = index.get_next_state(lib, t), follow(state, jnp.array([t]))


def test_rows_with_different_constraints_do_not_change_each_other(byte_level):
    """Three constraints and a free row in one batch: each row is what it is alone, bit for bit, at another batch
    size, and a shorter run is a prefix of a longer one."""
    gen = byte_level
    prompts = ["The king", "A date:", "{", "Romeo"]
    rows = dict(regex=[REGEXES["date"], None, None, None], choice=[None, ["yes", "no", "never"], None, None],
                json_schema=[None, None, SCHEMAS["required and optional"], None])  # fmt: skip
    kw = dict(max_new_tokens=40, temperature=1.0, seed=9)
    together = gen.generate(prompts, **kw, row_seeds=[0, 1, 2, 3], **rows)
    for r, prompt in enumerate(prompts):
        alone = {k: [v[r]] for k, v in rows.items()}
        one = gen.generate([prompt], **kw, row_seeds=[r], **alone)
        assert one.token_ids[0] == together.token_ids[r]
        # the log-softmax over the vocabulary is XLA's own reduction, unconstrained too (README): equal to rounding
        np.testing.assert_allclose(one.logprobs[0], together.logprobs[r], rtol=1e-6)
    doubled = gen.generate(prompts * 2, **kw, row_seeds=[0, 1, 2, 3] * 2, **{k: v * 2 for k, v in rows.items()})
    assert doubled.token_ids[:4] == together.token_ids
    short = gen.generate(prompts, **{**kw, "max_new_tokens": 7}, row_seeds=[0, 1, 2, 3], **rows)
    for s, full in zip(short.token_ids, together.token_ids):
        assert full[: len(s)] == s


def test_speculation_under_a_constraint_gives_plain_constrained_decoding(byte_level):
    regex = r"(the king|the kingdom|thee)( and (the king|thee)){1,6}"
    kw = dict(max_new_tokens=48, temperature=0.0, seed=1, regex=regex, top_logprobs=2)
    plain = byte_level.generate(["the king and the king and"] * 2, **kw)
    fast = byte_level.generate(["the king and the king and"] * 2, **kw, speculative=PromptLookup(num_tokens=4))
    assert fast.token_ids == plain.token_ids
    assert fast.logprobs == plain.logprobs and fast.top_logprobs == plain.top_logprobs
    assert sum(fast.speculation["accepted"]) > 0  # proposals were taken
    sampled_kw = {**kw, "temperature": 1.0}
    assert (byte_level.generate(["the king and"] * 3, **sampled_kw, speculative=PromptLookup(num_tokens=4)).token_ids
            == byte_level.generate(["the king and"] * 3, **sampled_kw).token_ids)  # fmt: skip


def test_stream_and_stop_strings_keep_working(byte_level):
    kw = dict(max_new_tokens=40, temperature=1.0, seed=3, regex=r"[a-z]{1,5}(, [a-z]{1,5}){1,5}\.")
    assert "".join(byte_level.stream("Words:", **kw)) == byte_level.generate("Words:", **kw).texts[0]
    cut = byte_level.generate("Words:", **kw, stop=[","])
    assert cut.finish_reasons == ["stop"] and "," not in cut.texts[0]
    many = byte_level.generate(["Words:", "More:"], **{**kw, "max_new_tokens": 60}, n=3)
    finished = [t for t, f in zip(many.texts, many.finish_reasons) if f != "length"]
    assert len(finished) >= 3 and all(re.fullmatch(kw["regex"], t) for t in finished)
    ids = byte_level.generate_ids([[5, 6, 7]], max_new_tokens=40, seed=3, choice=["king", "queen"])
    assert byte_level.tokenizer.decode(ids.token_ids[0]) in ("king", "queen")


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"json_schema": {"type": "number", "minimum": 1e-30}}, "at most 18 digits"),
        ({"json_schema": {"type": "string", "maximum": 3}}, "need type integer or number"),
        ({"json_schema": {"type": "integer", "minimum": 3, "maximum": 2}}, "no integer lies within"),
        ({"json_schema": {"type": "integer", "multipleOf": 3}}, "'multipleOf'"),
        ({"json_schema": {"type": "object", "patternProperties": {"a": {}}}}, "'patternProperties'"),
        ({"json_schema": {"oneOf": [{"type": "integer"}]}}, "'oneOf'"),
        ({"json_schema": {"type": "string", "format": "hostname"}}, "'hostname'"),
        ({"json_schema": "{not json"}, "not valid JSON"),
        ({"regex": "(unclosed"}, "not a regular expression"),
        ({"regex": ""}, "non-empty string"),
        ({"choice": []}, "choice must be"),
        ({"json_object": "yes"}, "json_object must be True"),
        ({"regex": "a", "choice": ["b"]}, "more than one"),
        ({"regex": ["a", "b", "c"]}, "one per prompt"),
    ],
)
def test_bad_constraints_are_refused_by_name(sentencepiece, settings, words):
    with pytest.raises(ConstraintError, match=re.escape(words)):
        sentencepiece.generate(["a", "b"], max_new_tokens=4, **settings)


def test_the_readme_shows_what_the_bundled_model_prints_under_its_schema(capsys, tmp_path):
    """The README's structured-output example: its schema, run through `gpt-jax generate --json-schema` on the
    bundled model, prints the output the README shows, which is valid under the schema."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Structured output: regex, choice, JSON schema")[1]
    code = section.split("```python\n")[1].split("gen.generate(")[0]
    scope: dict = {}
    exec(code, scope)  # the example's `schema = {...}`
    (tmp_path / "person.json").write_text(json.dumps(scope["schema"]))
    shown = section.split("What the bundled model printed")[1].split("```\n")[1]
    status, out, err = run_cli(capsys, ["generate", "ROMEO, as JSON:", "--json-schema", str(tmp_path / "person.json"),
                                        "--seed", "0", "--max-new-tokens", "120"])  # fmt: skip
    assert status == 0, err
    assert out == shown, "the README shows other output than the command prints"
    jsonschema.validate(json.loads(out[len("ROMEO, as JSON:") :]), scope["schema"])
