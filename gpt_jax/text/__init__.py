"""Steps 1 and 9: tokenizers (SentencePiece, `tokenizer.json`), incremental detokenizing, stop strings, chat templates.

Imports: `errors`, `util`.
"""
