"""Steps 1 and 9 of the pipeline: text -> token ids, and ids -> text (whole or incremental).

`BaseTokenizer` is what the pipeline needs of a tokenizer; `Tokenizer` (SentencePiece, `tokenizer.model`) and
`hf_tokenizer.HFTokenizer` (`tokenizer.json`, through the `tokenizers` package) implement it. Decoding maps every id
to its exact bytes (byte-fallback pieces such as `<0xE5>` are one raw byte) and runs them through an incremental
UTF-8 decoder, so a streamed character is emitted only once all of its bytes have arrived. `decode` is the same
decoder run to the end, so streamed pieces always concatenate to the decoded text.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from gpt_jax.errors import InputError, TokenizerError, check
from gpt_jax.text.detokenize import IncrementalDecoder

_UNK_TEXT = " \u2047 ".encode()  # how SentencePiece renders an unknown piece


def check_text(text, what: str = "text") -> str:
    """`text` must be a string that UTF-8 can encode (a lone surrogate such as '\\ud800' cannot)."""
    check(isinstance(text, str), InputError, f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} holds {text[e.start : e.end]!r} at index {e.start}, which is not valid Unicode text "
            "(a lone surrogate); remove it or decode the input with errors='replace'"
        ) from None
    return text


class BaseTokenizer(abc.ABC):
    """The tokenizer interface: special ids, `encode`, `decode`, exact bytes per id, and the files to save.

    A backend passes the per-id tables to `__init__` and implements `_encode_plain` (text -> ids, no specials),
    `id_to_piece` and `files`. `pad_id` is what finished rows emit (the model's pad piece, else its EOS id).
    """

    special_strings_are_text = True  # `encode("<s>")` spells the characters; False where the backend reads a token

    def __init__(
        self,
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        unk_id: int,
        add_bos: bool,
        add_eos: bool,
        token_bytes: Sequence[bytes],
        leading_space: Sequence[bool],
        special_texts: dict[str, int] | None = None,
    ):
        """token_bytes[i]: the exact bytes id i decodes to; leading_space[i]: a text that starts with id i loses
        the first space of those bytes when decoded (SentencePiece's dummy prefix)."""
        self.vocab_size = len(token_bytes)
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.add_bos, self.add_eos = add_bos and bos_id >= 0, add_eos and eos_id >= 0
        self._token_bytes = list(token_bytes)
        self._leading_space = list(leading_space)
        self.chat_template = None  # a chat.ChatTemplate, set when the model directory has one
        self.special_texts = dict(special_texts or {})  # e.g. {"<s>": 1, "<|eot_id|>": 128009}
        longest_first = sorted(self.special_texts, key=len, reverse=True)
        self._special_pattern = re.compile("|".join(map(re.escape, longest_first))) if longest_first else None

    @abc.abstractmethod
    def _encode_plain(self, text: str) -> list[int]:
        """Valid text -> ids, without BOS or EOS."""

    @abc.abstractmethod
    def id_to_piece(self, i: int) -> str:
        """The backend's own name of id `i`."""

    @abc.abstractmethod
    def files(self) -> dict[str, bytes]:
        """What a model directory stores for this tokenizer: {file name: bytes}."""

    # step 1: tokenize
    def encode(self, text: str | Sequence[str], add_special_tokens: bool = True) -> list[int] | list[list[int]]:
        """One string -> ids; a list of strings -> a list of id lists. BOS/EOS added as configured unless
        `add_special_tokens` is False."""
        if isinstance(text, str):
            return self._encode_one(text, add_special_tokens)
        check(
            isinstance(text, (list, tuple)),
            InputError,
            f"text must be a string or a list of strings, got {type(text).__name__}",
        )
        return [self._encode_one(t, add_special_tokens) for t in text]

    def _encode_one(self, text: str, add_special_tokens: bool) -> list[int]:
        ids = self._encode_plain(check_text(text))
        if not add_special_tokens:
            return ids
        return ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Text in which special-token strings stand for their ids (as a rendered chat template writes them, e.g.
        "<s>" or "<|eot_id|>") -> ids; nothing is added."""
        text = check_text(text)
        if self._special_pattern is None:
            return self._encode_plain(text)
        ids, start = [], 0
        for match in self._special_pattern.finditer(text):
            if match.start() > start:
                ids += self._encode_plain(text[start : match.start()])
            ids.append(self.special_texts[match.group()])
            start = match.end()
        return ids + (self._encode_plain(text[start:]) if start < len(text) else [])

    def apply_chat_template(self, conversation, add_generation_prompt: bool = True) -> list[int]:
        """A conversation ([{"role": ..., "content": ...}, ...]) -> prompt ids through the checkpoint's template, its
        special-token strings kept as tokens (what transformers' apply_chat_template(..., tokenize=True) gives)."""
        check(self.chat_template is not None, TokenizerError, "this tokenizer has no chat template: use generate")
        return self.encode_with_special_tokens(self.chat_template.render(conversation, add_generation_prompt))

    # step 9: detokenize
    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text: stops at the first EOS, drops pad and control pieces."""
        return self._decode_run(ids)

    def decode_with_special_tokens(self, ids: Iterable[int]) -> str:
        """Ids -> text in which special tokens appear as their strings (as `encode_with_special_tokens` reads them
        back); an EOS ends nothing."""
        names = {i: text for text, i in self.special_texts.items()}
        out, run = [], []
        for i in map(int, ids):
            if i in names:
                out += [self._decode_run(run), names[i]]
                run = []
            else:
                run.append(i)
        return "".join([*out, self._decode_run(run)])

    def _decode_run(self, ids: list[int]) -> str:
        decoder = IncrementalDecoder(self)
        return decoder.add(ids) + decoder.flush()

    def token_bytes(self, i: int) -> bytes:
        """The exact bytes id `i` stands for (b"" for control pieces)."""
        return self._token_bytes[i]

    def drops_leading_space(self, i: int) -> bool:
        """True when a text that starts with id `i` loses the first byte (a space) of `token_bytes(i)`."""
        return self._leading_space[i]

    def transformers_fields(self) -> dict:
        """What transformers' `tokenizer_config.json` needs to tokenize as `encode` does: the special tokens' names,
        whether BOS and EOS are added, and whether a special-token string in a text is read as text
        (`split_special_tokens`, as `encode` reads it here). With a chat template, the names it was given win, and
        special-token strings are read as tokens, which the rendered template needs."""
        ids = {"bos_token": self.bos_id, "eos_token": self.eos_id, "unk_token": self.unk_id, "pad_token": self.pad_id}
        fields = {name: self.id_to_piece(i) for name, i in ids.items() if 0 <= i < self.vocab_size}
        fields.update(add_bos_token=self.add_bos, add_eos_token=self.add_eos)
        fields["split_special_tokens"] = self.special_strings_are_text
        if self.chat_template is not None:
            fields.update({k: v for k, v in self.chat_template.transformers_fields().items() if v != ""})
        return fields

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
            f"pad={self.pad_id}, unk={self.unk_id})"
        )


class Tokenizer(BaseTokenizer):
    """A SentencePiece model (`tokenizer.model`) behind the `BaseTokenizer` interface."""

    def __init__(self, model: str | os.PathLike | bytes, *, add_bos: bool = True, add_eos: bool = False):
        try:
            if isinstance(model, bytes):
                self.model_bytes = model
            else:
                path = Path(model)
                check(path.is_file(), TokenizerError, f"tokenizer model file not found: {path}")
                self.model_bytes = path.read_bytes()
            self._sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        except (RuntimeError, OSError, TypeError) as e:
            raise TokenizerError(
                f"could not read SentencePiece model {model if not isinstance(model, bytes) else '<bytes>'}: {e}"
            ) from None
        sp = self._sp
        pieces = [self._piece_bytes(i) for i in range(sp.vocab_size())]
        normal = [not (sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i)) for i in range(sp.vocab_size())]
        spaced = next((i for i in range(sp.vocab_size()) if normal[i] and pieces[i][:1] == b" "), None)
        # Models trained with a dummy prefix drop the space that starts a text; ask SentencePiece which this is.
        strips = spaced is not None and len(sp.decode([spaced])) < len(pieces[spaced].decode())
        super().__init__(
            bos_id=sp.bos_id(),
            eos_id=sp.eos_id(),
            pad_id=sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id(),
            unk_id=sp.unk_id(),
            add_bos=add_bos,
            add_eos=add_eos,
            token_bytes=pieces,
            leading_space=[strips and n and p[:1] == b" " for n, p in zip(normal, pieces)],
            special_texts={sp.id_to_piece(i): i for i in range(sp.vocab_size()) if sp.is_control(i)},
        )

    def _piece_bytes(self, i: int) -> bytes:
        sp = self._sp
        if sp.is_control(i):
            return b""
        if sp.is_unknown(i):
            return _UNK_TEXT
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode()

    def _encode_plain(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def files(self) -> dict[str, bytes]:
        return {"tokenizer.model": self.model_bytes}


