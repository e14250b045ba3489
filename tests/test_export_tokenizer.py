"""A saved model directory tokenizes in transformers exactly as in gpt_jax: `AutoTokenizer` on the export encodes a
table of texts to the same ids (BOS included) and decodes them to the same text, for SentencePiece models with and
without a dummy prefix, for a `tokenizer.json`, and through a chat template."""

import json

import pytest

import gpt_jax
from gpt_jax import Generator
from gpt_jax.checkpoints.tokenizer_files import load_tokenizer
from gpt_jax.model.presets import LLAMA_TINY
from gpt_jax.text.chat import ChatTemplate
from gpt_jax.text.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tests.test_hf_tokenizer import sentencepiece_style  # noqa: E402

TEXTS = [
    "ROMEO: hi",
    "",
    " a leading space",
    "  two  spaces ",
    "line\nbreak\n\n",
    "\n",
    " ",
    "tab\there",
    "café über — ‘quotes’",
    "繁體中文 😀 한국어",
    "digits 1234567890 and 3.14159",
    "KING HENRY.\nWhat say you?",
    "x" * 60,
    "<s> inside </s> and <unk>",  # special-token strings are text to `encode`
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def exported(gen: Generator, directory, fmt: str):
    gpt_jax.save(gen, directory, format=fmt)
    return transformers.AutoTokenizer.from_pretrained(directory)


def assert_same_tokenization(ours, hf, texts=TEXTS) -> None:
    for text in texts:
        ids = ours.encode(text)
        assert hf(text).input_ids == ids, text
        upto_eos = ids[: ids.index(ours.eos_id)] if ours.eos_id in ids else ids  # where gpt_jax's decode stops
        assert hf.decode(upto_eos, skip_special_tokens=True) == ours.decode(ids), text
    assert hf.bos_token_id == ours.bos_id and hf.eos_token_id == ours.eos_id


@pytest.mark.parametrize("fmt", ["hf", "native"])
def test_the_bundled_model_tokenizes_alike_in_transformers(tmp_path, fmt):
    gen = gpt_jax.load()
    hf = exported(gen, tmp_path / "m", fmt)
    assert hf("ROMEO: hi").input_ids[0] == gen.tokenizer.bos_id == 1
    assert_same_tokenization(gen.tokenizer, hf)


def test_a_sentencepiece_model_with_a_dummy_prefix_tokenizes_alike(mistral_tokenizer, tmp_path):
    """Mistral's SentencePiece model: a prefix space, byte fallback, 32000 pieces."""
    config = LLAMA_TINY.replace(vocab_size=mistral_tokenizer.vocab_size, bos_id=1, eos_ids=(2,), pad_id=2)
    hf = exported(Generator.from_config(config, mistral_tokenizer), tmp_path / "m", "hf")
    assert_same_tokenization(mistral_tokenizer, hf)


def test_a_tokenizer_json_tokenizes_alike(corpus_slice, tmp_path):
    source = tmp_path / "source"
    hf_source = transformers.PreTrainedTokenizerFast(
        tokenizer_object=sentencepiece_style(corpus_slice, "llama2"), bos_token="<s>", eos_token="</s>"
    )
    hf_source.save_pretrained(source)
    config = LLAMA_TINY.replace(vocab_size=len(hf_source), bos_id=1, eos_ids=(2,), pad_id=0, add_bos=True)
    ours = load_tokenizer(source, config, exact=False)
    gen = Generator(config, Generator.from_config(config).params, ours)
    hf = exported(gen, tmp_path / "m", "hf")
    assert_same_tokenization(ours, hf)


def test_a_chat_template_renders_and_tokenizes_alike(tmp_path):
    gen = gpt_jax.load()
    gen.tokenizer.chat_template = ChatTemplate(CHATML, eos_token="</s>")
    hf = exported(gen, tmp_path / "m", "hf")
    conversation = [
        {"role": "system", "content": "You are a player."},
        {"role": "user", "content": "Speak, ROMEO."},
        {"role": "assistant", "content": "But soft!"},
        {"role": "user", "content": "Go on."},
    ]
    ours = gen.tokenizer.apply_chat_template(conversation)
    theirs = hf.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert list(theirs) == ours
    assert_same_tokenization(gen.tokenizer, hf, TEXTS[:-1])  # with a template, "<s>" in a text is the token there
    config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert config["split_special_tokens"] is False and config["bos_token"] == "<s>" and config["eos_token"] == "</s>"
    assert gpt_jax.load(tmp_path / "m").tokenizer.apply_chat_template(conversation) == ours  # and round-trips


def test_the_sentencepiece_tokenizer_states_its_special_tokens():
    tok = gpt_jax.load().tokenizer
    assert isinstance(tok, Tokenizer)
    fields = tok.transformers_fields()
    assert fields["bos_token"] == "<s>" and fields["eos_token"] == "</s>" and fields["add_bos_token"] is True
