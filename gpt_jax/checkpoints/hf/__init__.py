"""Hugging Face directories: config mapping per family, weight names, import and export."""
