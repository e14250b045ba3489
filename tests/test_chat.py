"""Chat templates: rendered as transformers renders them, special tokens kept as tokens, sandboxed, and `chat`
generates what `generate_ids` generates from the same prompt ids."""

import io
import json
import shutil

import httpx
import jax
import pytest

import gpt_jax
from gpt_jax import Generator, InputError, TokenizerError
from gpt_jax.checkpoints import checkpoint
from gpt_jax.model.presets import LLAMA_TINY
from gpt_jax.text.chat import ChatTemplate

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

# Two templates in the styles instruct checkpoints use: turn markers with a system prompt, and header blocks with
# BOS, strict alternation and an end-of-turn token.
TURNS = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HEADERS = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIALS = [
    "<|begin|>",
    "<|end|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CONVERSATION = [
    {"role": "user", "content": "Who is Romeo?"},
    {"role": "assistant", "content": "A Montague."},
    {"role": "user", "content": "And Juliet? "},
]


@pytest.fixture(scope="module")
def chat_dir(corpus_slice, tmp_path_factory):
    """A tiny Llama-shaped model with a byte-level BPE tokenizer.json, special tokens and a chat template."""
    d = tmp_path_factory.mktemp("chat") / "m"
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train([str(corpus_slice)], vocab_size=300, min_frequency=2, special_tokens=SPECIALS)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin|>", eos_token="<|end|>")
    hf_tok.chat_template = HEADERS
    hf_tok.save_pretrained(d)
    bos, eot = hf_tok.convert_tokens_to_ids("<|begin|>"), hf_tok.convert_tokens_to_ids("<|eot_id|>")
    cfg = LLAMA_TINY.replace(vocab_size=320, bos_id=bos, eos_ids=(eot,), pad_id=eot, tie_embeddings=True)
    gen = Generator.from_config(cfg, key=jax.random.key(3))
    config_dict, tensors = gpt_jax.checkpoints.hf.export.export_tensors(cfg, gen.params)
    (d / "config.json").write_text(json.dumps(config_dict))
    gpt_jax.checkpoints.safetensors_io.write(d / "model.safetensors", tensors)
    return d, hf_tok


CONVERSATIONS = {
    "multi-turn": CONVERSATION,
    "system": [{"role": "system", "content": "Answer in verse."}, {"role": "user", "content": "Who is Romeo?"}],
    "unicode": [{"role": "user", "content": "Qui est Roméo ? 你好 😀\n\n  tabs\tand 12345"}],
}


PAIRS = [  # the headers template refuses a system turn (a test below checks that refusal)
    (template, name)
    for template in (TURNS, HEADERS)
    for name in CONVERSATIONS
    if (template, name) != (HEADERS, "system")
]


@pytest.mark.parametrize(
    ("template", "name"), PAIRS, ids=[f"{'turns' if t == TURNS else 'headers'}-{n}" for t, n in PAIRS]
)
def test_rendering_and_ids_match_transformers(chat_dir, template, name):
    d, hf_tok = chat_dir
    conversation = CONVERSATIONS[name]
    hf_tok.chat_template = template
    ours = ChatTemplate(template, bos_token="<|begin|>", eos_token="<|end|>")
    for add in (True, False):
        text = ours.render(conversation, add_generation_prompt=add)
        assert text == hf_tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add)
    want = hf_tok.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True, return_dict=False)
    g = gpt_jax.load(d)
    assert g.tokenizer.encode_with_special_tokens(ours.render(conversation)) == list(want)
    g.tokenizer.chat_template = ours
    assert g.tokenizer.apply_chat_template(conversation) == list(want)


def test_byte_level_tokenizer_json_with_chatml_specials_matches_transformers(chat_dir):
    d, hf_tok = chat_dir
    tok = gpt_jax.load(d).tokenizer
    texts = [
        "繁體中文 😀 café",
        "  runs   of\n\n\tspaces  ",
        "digits 1234567890 3.14159",
        "<|im_start|>user\nhi<|im_end|>",
    ]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == hf_tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
    assert tok.encode(texts[3], add_special_tokens=False)[0] == hf_tok.convert_tokens_to_ids("<|im_start|>")


def test_chat_generates_what_generate_ids_does_from_the_same_prompt(chat_dir):
    d, hf_tok = chat_dir
    hf_tok.chat_template = HEADERS
    g = gpt_jax.load(d)
    assert g.tokenizer.chat_template is not None and g.tokenizer.chat_template.bos_token == "<|begin|>"
    out = g.chat(CONVERSATION, max_new_tokens=8, seed=4, temperature=1.0)
    prompt = hf_tok.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=False)
    ids = g.generate_ids([list(prompt)], max_new_tokens=8, seed=4, temperature=1.0)
    assert out.token_ids == ids.token_ids and isinstance(out.texts[0], str)
    two = g.chat([CONVERSATION, CONVERSATION[:1]], max_new_tokens=8, seed=4, temperature=1.0)
    assert two.token_ids[0] == out.token_ids[0]  # a row's tokens do not depend on its batch-mates
    again = gpt_jax.load(checkpoint.save(g, d.parent / "saved"))  # the template travels with a save
    assert again.tokenizer.chat_template.source == HEADERS
    assert again.chat(CONVERSATION, max_new_tokens=8, seed=4, temperature=1.0).token_ids == out.token_ids


def test_bad_conversations_and_hostile_templates_are_typed_errors(chat_dir):
    g = gpt_jax.load(chat_dir[0])
    with pytest.raises(InputError, match="roles must alternate"):
        g.chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(InputError, match="message 0 must be a dict"):
        g.chat([{"role": "user"}])
    with pytest.raises(InputError, match="conversations must be a list"):
        g.chat([])
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"  # what a sandbox exists for
    with pytest.raises(InputError, match="refused the conversation"):
        ChatTemplate(escape).render(CONVERSATION)
    with pytest.raises(InputError, match="does not compile"):
        ChatTemplate("{% for %}")
    g.tokenizer.chat_template = None  # as for a checkpoint without one
    with pytest.raises(TokenizerError, match="no chat template"):
        g.chat(CONVERSATION)


def test_the_chat_command_streams_replies_keeps_history_and_resets(chat_dir, capsys, monkeypatch):
    import io

    from gpt_jax.cli.main import main

    d, _ = chat_dir
    g = gpt_jax.load(d)
    turns = "Who is Romeo?\nAnd Juliet?\n/reset\nWho is Romeo?\n/exit\nnever read\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(turns))
    kw = {"max_new_tokens": 6, "seed": 2, "temperature": 1.0}
    code = main(["chat", "--model", str(d), "--max-new-tokens", "6", "--seed", "2", "--temperature", "1.0"])
    out = capsys.readouterr()
    assert code == 0 and "(conversation cleared)" in out.err
    first = [{"role": "user", "content": "Who is Romeo?"}]
    want = g.chat(first, **kw).texts[0]
    second = first + [{"role": "assistant", "content": want}, {"role": "user", "content": "And Juliet?"}]
    # the history is kept for the second turn; after /reset the same question gets the same reply
    assert out.out == want + "\n" + g.chat(second, **kw).texts[0] + "\n" + want + "\n"
    code = main(["chat"])  # the bundled model has no template
    assert code == 2 and "has no chat template" in capsys.readouterr().err


def test_chat_greedy_equals_transformers_and_stops_at_the_end_of_turn_id(chat_dir, tmp_path):
    """generation_config.json names the end-of-turn ids (a list); greedy chat equals transformers generating from the
    template's ids and ends at the first of them. The last token the model's greedy run meets for the first time is
    made an end-of-turn id, so the stop happens inside the run."""
    torch = pytest.importorskip("torch")
    d, hf_tok = chat_dir
    hf_tok.chat_template = HEADERS
    bos, eot = hf_tok.convert_tokens_to_ids("<|begin|>"), hf_tok.convert_tokens_to_ids("<|eot_id|>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    cfg.update(dict(num_key_value_heads=2, initializer_range=0.3, bos_token_id=bos, eos_token_id=eot))
    model = transformers.LlamaForCausalLM(cfg).eval()  # weights large enough for a varied greedy run
    copy = tmp_path / "m"
    model.save_pretrained(copy)
    hf_tok.save_pretrained(copy)
    prompt = hf_tok.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        free = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24, eos_token_id=None)
    free = free[0, len(prompt) :].tolist()
    stop_at = max(i for i in range(len(free)) if free[i] not in free[:i])  # the last fresh token
    assert stop_at >= 3
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [free[stop_at], eot]}))
    g = gpt_jax.load(copy)
    assert g.config.eos_ids == (free[stop_at], eot)
    out = g.chat(CONVERSATION, max_new_tokens=24, temperature=0.0)
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=24, eos_token_id=[free[stop_at], eot]
        )
    assert out.token_ids[0] == ref[0, len(prompt) :].tolist() == free[: stop_at + 1]
    assert out.finish_reasons == ["eos"]


def test_generation_config_sampling_defaults_apply_where_the_caller_sets_none(chat_dir, tmp_path, capsys):
    import shutil

    from gpt_jax.checkpoints.hf.config import generation_defaults
    from tests.conftest import run_cli

    assert generation_defaults({"do_sample": True, "temperature": 0.6, "top_p": 0.9}) == {
        "temperature": 0.6,
        "top_p": 0.9,
        "top_k": 50,  # transformers' own default where the file names none
        "min_p": 0.0,
    }
    assert generation_defaults({"do_sample": False, "repetition_penalty": 1.1}) == {
        "temperature": 0.0,
        "repetition_penalty": 1.1,
    }
    assert generation_defaults({"eos_token_id": 2}) == {}  # no sampling intent stated: this project's defaults
    with pytest.raises(gpt_jax.CheckpointError, match="field 'temperature' must be int or float"):
        generation_defaults({"do_sample": True, "temperature": "hot"})
    copy = tmp_path / "m"
    shutil.copytree(chat_dir[0], copy)
    sampling = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20}
    (copy / "generation_config.json").write_text(json.dumps(sampling))
    g = gpt_jax.load(copy)
    assert g.defaults == {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.0}
    prompt = [[1, 40, 41, 42]]
    implicit = g.generate_ids(prompt, max_new_tokens=16, seed=5, ignore_eos=True).token_ids
    explicit = g.generate_ids(prompt, max_new_tokens=16, seed=5, ignore_eos=True, temperature=0.6, top_p=0.9, top_k=20)
    ours = g.generate_ids(prompt, max_new_tokens=16, seed=5, ignore_eos=True, temperature=0.8, top_p=0.95, top_k=0)
    assert implicit == explicit.token_ids != ours.token_ids
    saved = gpt_jax.load(checkpoint.save(g, tmp_path / "native"))  # the defaults travel with a save
    assert saved.defaults == g.defaults
    assert saved.generate_ids(prompt, max_new_tokens=16, seed=5, ignore_eos=True).token_ids == implicit
    # the command line passes only the flags given, so the checkpoint's defaults fill the rest
    code, out, _ = run_cli(capsys, ["generate", "--model", str(copy), "Romeo", "--seed", "5", "--json"])
    row = json.loads(out)
    assert code == 0 and row["token_ids"] == g.generate(["Romeo"], seed=5).token_ids[0]
    flags = ["--temperature", "0.8", "--top-p", "0.95", "--top-k", "0"]
    code, out, _ = run_cli(capsys, ["generate", "--model", str(copy), "Romeo", "--seed", "5", "--json", *flags])
    assert (
        json.loads(out)["token_ids"] == g.generate(["Romeo"], seed=5, temperature=0.8, top_p=0.95, top_k=0).token_ids[0]
    )


CHATML = (  # Qwen's style: turns end in <|im_end|>, the model's EOS; a default system turn when none is given
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    + TURNS
)
CHATML_CONVERSATIONS = {
    "default system": CONVERSATION[:1],
    "system": CONVERSATIONS["system"],
    "multi-turn": CONVERSATION,
}


@pytest.fixture(scope="module")
def chatml_dir(chat_dir, tmp_path_factory):
    """chat_dir's model and tokenizer as a ChatML checkpoint: <|im_end|> ends every turn and is the model's EOS."""
    d, hf_tok = chat_dir
    out = tmp_path_factory.mktemp("chatml") / "m"
    shutil.copytree(d, out)
    im_end = hf_tok.convert_tokens_to_ids("<|im_end|>")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "eos_token_id": im_end, "pad_token_id": im_end}))
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config.update(chat_template=CHATML, eos_token="<|im_end|>")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (out / "chat_template.jinja").write_text(CHATML)  # where transformers 5 keeps the template
    return out, im_end, hf_tok


@pytest.mark.parametrize("name", CHATML_CONVERSATIONS)
def test_a_chatml_reply_is_the_text_of_its_tokens_although_the_prompt_holds_the_eos_id(chatml_dir, name):
    d, im_end, hf_tok = chatml_dir
    g = gpt_jax.load(d)
    conversation = CHATML_CONVERSATIONS[name]
    assert g.config.eos_ids == (im_end,) and im_end in g.tokenizer.apply_chat_template(conversation)
    settings = dict(max_new_tokens=12, min_new_tokens=12, seed=1, temperature=1.0)
    out = g.chat(conversation, **settings)
    ids = out.token_ids[0]
    assert len(ids) == 12 and out.texts[0] == hf_tok.decode(ids, skip_special_tokens=True) and out.texts[0]


def test_the_chat_command_prints_a_chatml_reply(chatml_dir, capsys, monkeypatch):
    from gpt_jax.cli.main import main

    d, _, _ = chatml_dir
    monkeypatch.setattr("sys.stdin", io.StringIO("Who is Romeo?\n/exit\n"))
    flags = ["--max-new-tokens", "12", "--min-new-tokens", "12", "--seed", "1", "--temperature", "1.0"]
    assert main(["chat", "--model", str(d), *flags]) == 0
    want = gpt_jax.load(d).chat(CONVERSATION[:1], max_new_tokens=12, min_new_tokens=12, seed=1, temperature=1.0)
    assert capsys.readouterr().out == want.texts[0] + "\n" and want.texts[0]


def test_the_server_answers_a_chatml_conversation_with_its_text(chatml_dir):
    from tests.serving import RunningServer

    d, _, hf_tok = chatml_dir
    g = gpt_jax.load(d)
    settings = dict(max_new_tokens=12, min_new_tokens=12, seed=1, temperature=1.0, top_p=1.0)
    want = g.chat(CONVERSATION, **settings)
    server = RunningServer(g, "chatml", slots=2)
    try:
        body = {"model": "chatml", "messages": CONVERSATION, "max_tokens": 12, "min_tokens": 12, "seed": 1,
                "temperature": 1.0, "top_p": 1.0}
        reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()
    finally:
        server.stop()
    assert reply["choices"][0]["message"]["content"] == want.texts[0] != ""
    assert want.texts[0] == hf_tok.decode(want.token_ids[0], skip_special_tokens=True)
