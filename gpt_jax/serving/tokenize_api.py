"""vLLM's tokenizer endpoints, in its request and response shapes, for clients that count or score tokens without
the model's tokenizer (lm-eval's `tokenizer_backend=remote`):

    POST /tokenize         {"prompt": str, "add_special_tokens": true, "return_token_strs": false}
                           or {"messages": [...], "add_generation_prompt": true, "add_special_tokens": false}
                           -> {"count", "max_model_len", "tokens", "token_strs"}
    POST /detokenize       {"tokens": [int, ...]} -> {"prompt": str}
    GET  /tokenizer_info   the special tokens' names, whether BOS/EOS are added, the chat template

As in vLLM (through transformers), a special-token string in the prompt ("<s>", "<|im_end|>") is read as its token
and `/detokenize` writes special tokens as their strings, so `/tokenize` of a `/detokenize` gives the ids back.
"""

from __future__ import annotations

from gpt_jax.errors import GptJaxError
from gpt_jax.serving.openai_api import bad, check_fields, flag
from gpt_jax.text.tokenizer import BaseTokenizer, check_text

TOKENIZE_FIELDS = {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt", "return_token_strs"}
DETOKENIZE_FIELDS = {"model", "tokens"}
MAX_DETOKENIZE_IDS = 1 << 20


def tokenize(body: dict, tok: BaseTokenizer, max_model_len: int) -> dict:
    """A /tokenize body -> its response."""
    check_fields(body, TOKENIZE_FIELDS)
    if ("prompt" in body) == ("messages" in body):
        raise bad("give either prompt (a string) or messages (a conversation)", "prompt")
    try:
        if "prompt" in body:
            if not isinstance(body["prompt"], str):
                raise bad(f"prompt must be a string, got {type(body['prompt']).__name__}", "prompt")
            if "add_generation_prompt" in body:
                raise bad("add_generation_prompt goes with messages, not prompt", "add_generation_prompt")
            ids = tok.encode_with_special_tokens(check_text(body["prompt"], "prompt"))
            specials = flag(body, "add_special_tokens", True)
        else:
            if tok.chat_template is None:
                raise bad("this model has no chat template: tokenize a prompt", "messages")
            text = tok.chat_template.render(body["messages"], flag(body, "add_generation_prompt", True))
            ids = tok.encode_with_special_tokens(text)
            specials = flag(body, "add_special_tokens", False)
    except GptJaxError as e:
        raise bad(str(e), "prompt" if "prompt" in body else "messages") from None
    if specials:
        ids = ([tok.bos_id] if tok.add_bos else []) + ids + ([tok.eos_id] if tok.add_eos else [])
    strs = [tok.id_to_piece(i) for i in ids] if flag(body, "return_token_strs", False) else None
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids, "token_strs": strs}


def detokenize(body: dict, tok: BaseTokenizer) -> dict:
    """A /detokenize body -> its response."""
    check_fields(body, DETOKENIZE_FIELDS)
    ids = body.get("tokens")
    if not isinstance(ids, list) or len(ids) > MAX_DETOKENIZE_IDS:
        raise bad(f"tokens must be a list of at most {MAX_DETOKENIZE_IDS} token ids", "tokens")
    for i in ids:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < tok.vocab_size:
            raise bad(f"tokens must be token ids in [0, {tok.vocab_size}), got {i!r}", "tokens")
    return {"prompt": tok.decode_with_special_tokens(ids)}


def tokenizer_info(tok: BaseTokenizer, max_model_len: int) -> dict:
    """The /tokenizer_info response: what transformers' tokenizer_config.json would say, and the chat template."""
    fields = tok.transformers_fields()
    template = tok.chat_template.source if tok.chat_template is not None else None
    return {
        "tokenizer_class": type(tok).__name__,
        "vocab_size": tok.vocab_size,
        "model_max_length": max_model_len,
        **fields,
        "chat_template": template,
    }
