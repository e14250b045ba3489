"""The package's layout: folders by concern whose imports run one way (the README's table), few top-level modules,
and every folder importable."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpt_jax"
TOP_LEVEL = {"__init__", "errors", "distributed"}  # the public entry points; everything else sits in a folder
MAY_IMPORT = {  # the README's architecture table: each room and the rooms it may import
    "errors": set(),
    "util": {"errors"},
    "text": {"errors", "util"},
    "model": {"errors", "util"},
    "parallel": {"errors", "util", "model"},
    "decoding": {"errors", "util", "text", "model", "parallel"},
    "checkpoints": {"errors", "util", "text", "model", "parallel", "decoding"},
    "serving": {"errors", "util", "text", "model", "parallel", "decoding"},
    "training": {"errors", "util", "text", "model", "parallel", "decoding", "checkpoints"},
    "api": {"errors", "util", "text", "model", "parallel", "decoding", "checkpoints"},
    "jobs": {"errors", "util", "text", "model", "parallel", "decoding", "checkpoints", "serving", "api"},
    "bench": {"errors", "util", "text", "model", "parallel", "decoding", "checkpoints", "serving", "training", "api",
              "jobs"},
    "cli": {"errors", "util", "text", "model", "parallel", "decoding", "checkpoints", "serving", "training", "api",
            "jobs", "bench"},
}
FOLDERS = sorted(room for room in MAY_IMPORT if (PACKAGE / room).is_dir())


def room_of(parts: list[str]) -> str:
    """The room of gpt_jax.<parts>: its folder, `errors`, or `api` for the public entry points."""
    if not parts or parts[0] in ("__init__", "distributed"):
        return "api"
    return parts[0]


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpt_jax":
            parts = node.module.split(".")[1:]
            names = [parts + [a.name] for a in node.names] if not parts else [parts]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "gpt_jax"]
        for parts in names:
            if parts and (PACKAGE / parts[0]).is_dir() or parts and (PACKAGE / f"{parts[0]}.py").is_file():
                rooms.add(room_of(parts))
            elif not parts or parts[0] not in MAY_IMPORT:
                rooms.add("api")  # `import gpt_jax` or a name re-exported at the top
    return rooms


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        yield path, room_of(parts) if len(parts) == 1 and parts[0] != "errors" else parts[0]


def test_imports_run_one_way_by_the_readme_table():
    wrong = []
    for path, room in modules():
        for other in imported_rooms(path) - {room}:
            if other not in MAY_IMPORT[room]:
                wrong.append(f"{path.relative_to(PACKAGE)} ({room}) imports {other}")
    assert wrong == []


def test_the_table_is_a_strict_order():
    for room, allowed in MAY_IMPORT.items():
        for lower in allowed:
            assert room not in MAY_IMPORT[lower], (room, lower)
            assert MAY_IMPORT[lower] <= allowed, (room, lower)  # what a lower room may import, a higher one may too


def test_the_top_level_holds_only_the_public_entry_points():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL
    assert set(FOLDERS) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


@pytest.mark.parametrize("room", FOLDERS)
def test_every_folder_imports_and_says_what_it_holds(room):
    module = importlib.import_module(f"gpt_jax.{room}")
    assert module.__doc__ and len(module.__doc__.strip()) > 40
