"""Nothing lost: `save` and training refuse to write over what a user owns, and look at the disk afterwards."""

import os
import threading

import jax
import pytest

import gpt_jax
from gpt_jax import CheckpointError, Generator, InputError
from gpt_jax.checkpoints import checkpoint
from gpt_jax.model.presets import LLAMA_TINY
from gpt_jax.training.config import TrainConfig
from gpt_jax.training.trainer import train


@pytest.fixture(scope="module")
def gen(small_tokenizer):
    return Generator.from_config(LLAMA_TINY.replace(vocab_size=320, pad_id=3), small_tokenizer, jax.random.key(1))


def snapshot(root):
    """Every path under root with its bytes (None for directories)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def user_directory(tmp_path):
    d = tmp_path / "thesis"
    (d / "data").mkdir(parents=True)
    (d / "thesis.txt").write_text("four years of work")
    (d / "data" / "results.csv").write_text("a,b\n1,2\n")
    return d


@pytest.mark.parametrize(
    "target, error, message",
    [
        (user_directory, CheckpointError, "holding files that are not a checkpoint's"),
        (lambda p: (p / "notes.txt").write_text("mine") and p / "notes.txt", CheckpointError, "is not a checkpoint"),
        (lambda p: "", InputError, "must be a non-empty path"),
        (lambda p: os.getcwd(), CheckpointError, "working directory"),
        (lambda p: b"/tmp/x", InputError, "must be a str or os.PathLike"),
    ],
)
def test_save_refuses_to_replace_what_is_not_a_checkpoint(gen, tmp_path, target, error, message):
    target = target(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(error, match=message):
        checkpoint.save(gen, target)
    assert snapshot(tmp_path) == before  # nothing changed, nothing left behind


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"../PWNED.txt": b"x"}, "plain file names"),
        ({"sub/file": b"x"}, "plain file names"),
        ({".hidden": b"x"}, "plain file names"),
        ({"config.json": b"{"}, "one of the checkpoint's own files"),
        ({"model.safetensors": b""}, "one of the checkpoint's own files"),
        ({"notes.txt": "text, not bytes"}, "must be bytes"),
        (["notes.txt"], "must be a dict"),
    ],
)
def test_extra_files_are_checked_before_writing(gen, tmp_path, extra, message):
    previous = checkpoint.save(gen, tmp_path / "models" / "m")
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match=message):
        checkpoint.save(gen, previous, extra_files=extra)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "PWNED.txt").exists()
    gpt_jax.load(previous)  # the previous checkpoint still loads


def test_a_checkpoint_with_recorded_extras_can_be_saved_again(gen, tmp_path):
    target = checkpoint.save(gen, tmp_path / "m", extra_files={"notes.md": b"run 1"})
    checkpoint.save(gen, target, extra_files={"notes.md": b"run 2"})
    assert (target / "notes.md").read_bytes() == b"run 2"
    (target / "mine.txt").write_text("a user's file put into the checkpoint")
    with pytest.raises(CheckpointError, match="mine.txt"):
        checkpoint.save(gen, target)
    assert (target / "mine.txt").read_text().startswith("a user's file")


def test_save_needs_a_generator(tmp_path):
    with pytest.raises(InputError, match="generator must be a gpt_jax.Generator, got NoneType"):
        checkpoint.save(None, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_concurrent_saves_to_one_directory_all_finish(gen, tmp_path):
    target = tmp_path / "shared"
    errors = []

    def save_three():
        try:
            for _ in range(3):
                checkpoint.save(gen, target)
        except Exception as e:  # noqa: BLE001 - any failure is what the test looks for
            errors.append(e)

    threads = [threading.Thread(target=save_three) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no temporary directory left behind
    assert gpt_jax.load(target).config == gen.config


def test_training_creates_missing_parents_and_checks_the_output_first(gen, small_tokenizer, corpus_slice, tmp_path):
    cfg = gen.config.replace(max_seq_len=64)
    tc = TrainConfig(steps=2, batch_size=2, seq_len=32, warmup_steps=0, eval_every=2, eval_windows=2)
    out = tmp_path / "runs" / "shakespeare"  # runs/ does not exist yet
    trainer = train([corpus_slice], out, cfg, tc, tokenizer=small_tokenizer, progress=False)
    assert trainer.step == 2 and gpt_jax.load(out).config == trainer.config

    user = user_directory(tmp_path)
    before = snapshot(user)
    with pytest.raises(CheckpointError, match="not a checkpoint's"):
        train([corpus_slice], user, cfg, tc, tokenizer=small_tokenizer, progress=False)
    assert snapshot(user) == before
    (tmp_path / "file").write_text("mine")
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        train([corpus_slice], tmp_path / "file", cfg, tc, tokenizer=small_tokenizer, progress=False)
    assert (tmp_path / "file").read_text() == "mine"


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system of its own (tmpfs, mounted as root), so a save can run out of space for real."""
    import subprocess

    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)  # lazily: a loaded model still maps its weights


def test_a_save_that_fills_the_disk_is_an_oserror_and_the_old_checkpoint_stays(gen, small_disk):
    target = small_disk / "model"
    gpt_jax.save(gen, target)  # a few hundred kB: fits
    before = snapshot(target)
    big = Generator.from_config(LLAMA_TINY.replace(vocab_size=320, d_model=256, mlp_dim=1024, pad_id=3), gen.tokenizer)
    with pytest.raises(OSError) as raised:
        gpt_jax.save(big, target)  # about 8 MB of weights
    assert raised.value.errno == 28 and not isinstance(raised.value, gpt_jax.GptJaxError)
    assert snapshot(target) == before
    assert gpt_jax.load(target).config == gen.config
    assert sorted(p.name for p in small_disk.iterdir()) == ["model"]  # the partial save is cleaned away


def test_results_written_atomically_get_the_permissions_of_a_plain_open(tmp_path):
    """A benchmark's JSON written through a temporary file is readable as one written with `open` would be (the
    umask's permissions), not private to its owner like the temporary file."""
    import os

    from gpt_jax.util.output_files import write_text_atomically

    old = os.umask(0o027)
    try:
        out = write_text_atomically(tmp_path / "result.json", '{"machine": {}}\n')
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
    finally:
        os.umask(old)
    assert out.read_text() == '{"machine": {}}\n'
    assert oct(out.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777) == oct(0o640)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
