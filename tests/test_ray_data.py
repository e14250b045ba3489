"""gpt_jax in Ray Data's `map_batches` on a local Ray cluster: every row equals `generate` on that row alone, and
another batch size and actor count give identical output."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import ray

from gpt_jax.jobs.ray_data import Generate

WORDS = "ROMEO JULIET the king of night and day my lord what is love".split()


def rows(count: int) -> list[dict]:
    rng = random.Random(3)
    out = []
    for i in range(count):
        row = {
            "id": i,
            "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))),
            "max_tokens": rng.randint(1, 6),
            "temperature": rng.choice([0.0, 0.7, 1.0]),
            "top_p": rng.choice([1.0, 0.9]),
            "seed": 500 + i,
        }
        out.append(row)
    return out


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(dataset, batch_size: int, actors: int, written) -> dict[int, dict]:
    """The dataset through `actors` actors, written back as JSON files under `written`, and read from there."""
    out = dataset.map_batches(
        Generate, fn_constructor_kwargs={"slots": 4}, batch_size=batch_size, concurrency=actors, num_cpus=0.5
    )
    out.write_json(str(written))
    rows = [json.loads(line) for path in sorted(written.glob("*.json*")) for line in path.read_text().splitlines()]
    return {r["id"]: r for r in rows}


@pytest.mark.slow
def test_rows_in_ray_data_equal_generate_alone_whatever_the_batch_size_and_actors(cluster, tmp_path):
    import gpt_jax

    source = tmp_path / "rows.jsonl"
    items = rows(200)
    source.write_text("".join(json.dumps(r) + "\n" for r in items))
    dataset = ray.data.read_json(str(source))
    two = run(dataset, batch_size=16, actors=2, written=tmp_path / "two")
    one = run(dataset, batch_size=50, actors=1, written=tmp_path / "one")
    assert sorted(two) == list(range(200))
    gen = gpt_jax.load()
    differ = []
    for item in items:
        alone = gen.generate(
            [item["prompt"]], max_new_tokens=item["max_tokens"], temperature=item["temperature"],
            top_p=item["top_p"], seed=item["seed"],
        )
        got = two[item["id"]]
        assert got["error"] is None and got["seed"] == item["seed"]
        if (got["text"], list(got["token_ids"])) != (alone.texts[0], alone.token_ids[0]):
            differ.append(item["id"])
    assert differ == []
    fields = ("text", "finish_reason", "completion_tokens", "seed")
    assert [[one[i][f] for f in fields] for i in range(200)] == [[two[i][f] for f in fields] for i in range(200)]


def test_a_batch_in_this_process_refuses_bad_rows_by_row_and_draws_missing_seeds():
    generate = Generate(slots=2)
    batch = {
        "prompt": np.array(["ROMEO:", None, "JULIET:"], dtype=object),
        "messages": np.array([None, None, None], dtype=object),
        "max_tokens": np.array([3, 3, -1]),
        "note": np.array(["a", "b", "c"]),
    }
    out = generate(batch)
    assert list(out["note"]) == ["a", "b", "c"]
    assert out["error"][0] is None and isinstance(out["text"][0], str) and out["completion_tokens"][0] == 3
    assert isinstance(out["seed"][0], int)  # drawn, so the row can be run again
    assert out["error"][1] == "a row needs exactly one of prompt and messages"
    assert "max_tokens" in out["error"][2] and out["text"][2] is None
