"""Checkpoints as directories: the project's own format, safe writes, validated safetensors, tokenizer files, and
Hugging Face configs, weight names, import and export (`hf/`).

Imports: everything below it (`errors`, `util`, `text`, `model`, `parallel`, `decoding`).
"""
