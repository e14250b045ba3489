"""Reading JSON files (a model directory's, or one given on the command line): damage is a typed error naming the
file."""

from __future__ import annotations

import json
from pathlib import Path

from gpt_jax.errors import CheckpointError, GptJaxError, check


def read_json_object(path: Path, error: type[GptJaxError] = CheckpointError, label: str | None = None) -> dict:
    """A JSON file that must hold an object (config.json, generation_config.json, an index, a --config file);
    `error` is raised with `label` (default: the path) when it is not UTF-8, not JSON or not an object."""
    label = label or str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{label}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise error(f"{label}: not valid JSON: {e}") from None
    check(isinstance(data, dict), error, f"{label}: expected a JSON object, got {type(data).__name__}")
    return data
