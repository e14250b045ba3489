"""Training: loss goes down, resume equals an uninterrupted run, evaluation agrees with scoring."""

import dataclasses

import jax
import numpy as np
import pytest

from gpt_jax.checkpoints import checkpoint
from gpt_jax.errors import InputError
from gpt_jax.model.presets import LLAMA_TINY, PRESETS
from gpt_jax.training.corpus import Corpus, unigram_baseline
from gpt_jax.training.config import TrainConfig
from gpt_jax.training.trainer import Trainer, train

TC = TrainConfig(
    steps=12,
    batch_size=4,
    seq_len=32,
    learning_rate=1e-2,
    warmup_steps=2,
    eval_every=6,
    eval_windows=8,
    checkpoint_every=6,
    block_tokens=256,
    val_every=5,
)


@pytest.fixture(scope="module")
def setup(small_tokenizer, corpus_slice):
    cfg = LLAMA_TINY.replace(vocab_size=320, pad_id=3, n_layers=1)
    corpus = Corpus.from_text(corpus_slice.read_text(), small_tokenizer, TC)
    return cfg, small_tokenizer, corpus


def test_loss_decreases_and_beats_nothing_yet(setup):
    cfg, tok, corpus = setup
    trainer = Trainer(cfg, tok, corpus, TC)
    start = trainer.evaluate()["val_nats_per_token"]
    trainer.run(progress=False)
    end = trainer.history[-1]["val_nats_per_token"]
    assert end < start - 0.5, (start, end)
    assert np.isclose(start, np.log(320), atol=0.3)  # an untrained model is close to uniform
    assert trainer.history[-1]["val_nats_per_char"] <= trainer.history[-1]["val_nats_per_token"]


def test_resume_matches_uninterrupted(setup, tmp_path):
    cfg, tok, corpus = setup
    straight = Trainer(cfg, tok, corpus, TC)
    straight.run(progress=False)

    first = Trainer(cfg, tok, corpus, TC, tmp_path / "run")
    first.run(progress=False, stop_at=6)  # checkpoint written at step 6
    resumed = Trainer(cfg, tok, corpus, TC, tmp_path / "run")
    resumed.resume(tmp_path / "run")
    assert resumed.step == 6
    resumed.run(progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(straight.params), jax.tree_util.tree_leaves(resumed.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert straight.history[-1] == {**resumed.history[-1], "elapsed_s": straight.history[-1]["elapsed_s"]}


def test_evaluation_agrees_with_score(setup):
    cfg, tok, corpus = setup
    trainer = Trainer(cfg, tok, corpus, TC)
    trainer.run(progress=False, stop_at=3)
    windows = corpus.val_windows(tok, TC)
    scored = trainer.generator().score_ids([w.tolist() for w in windows])
    per_token = -sum(scored.log_likelihood) / sum(scored.num_tokens)
    assert np.isclose(per_token, trainer.evaluate()["val_nats_per_token"], rtol=1e-5)


def test_batches_are_a_function_of_seed_and_step(setup):
    _, tok, corpus = setup
    assert np.array_equal(corpus.batch(1, TC, 5), corpus.batch(1, TC, 5))
    assert not np.array_equal(corpus.batch(1, TC, 5), corpus.batch(1, TC, 6))
    assert (corpus.batch(1, TC, 0)[:, 0] == 1).all()
    assert not np.array_equal(corpus.batch(1, dataclasses.replace(TC, seed=1), 5), corpus.batch(1, TC, 5))


def test_unigram_baseline_is_finite_and_below_uniform(setup):
    _, _, corpus = setup
    assert 2.0 < unigram_baseline(corpus, 320) < np.log(320)


def test_train_entry_point_writes_a_loadable_checkpoint(corpus_slice, tmp_path):
    cfg = LLAMA_TINY.replace(vocab_size=400, n_layers=1)
    tc = dataclasses.replace(TC, steps=2, warmup_steps=1, eval_every=2, checkpoint_every=2)
    trainer = train([corpus_slice], tmp_path / "out", cfg, tc, progress=False)
    assert trainer.step == 2
    g = checkpoint.load(tmp_path / "out")
    assert g.tokenizer.vocab_size == 400 and g.config.pad_id == 3
    assert isinstance(g.generate("ROMEO:", max_new_tokens=4, seed=0).texts[0], str)


def test_bad_training_config():
    with pytest.raises(InputError, match="batch_size must be an integer >= 1"):
        TrainConfig(batch_size=0).validate()


SMALL_PRESETS = ["gpt2-tiny", "llama-tiny", "shakespeare"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_a_preset_trains_a_step_with_every_default(preset, capsys, tmp_path):
    """`gpt-jax train FILE --out DIR --preset P`: nothing else given but the step count, on the full corpus."""
    import json

    from tests.conftest import CORPUS, run_cli

    argv = ["train", str(CORPUS), "--out", str(tmp_path / "run"), "--preset", preset, "--steps", "1"]
    code, out, err = run_cli(capsys, argv)
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    config = PRESETS[preset]
    assert report["step"] == 1 and np.isfinite(report["val_nats_per_token"])
    assert report["vocab_size"] == (512 if config.vocab_size < 260 else config.vocab_size)
    saved = checkpoint.load(tmp_path / "run")
    assert saved.config.max_seq_len == config.max_seq_len and saved.config.vocab_size == report["vocab_size"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_presets_defaults_fit_its_model(preset):
    """The defaults that depend on the model (window length, warm-up) fill in to values the run accepts; the large
    presets' one-step runs are measured outside the suite (README, Training)."""
    config = PRESETS[preset]
    tc = TrainConfig().for_model(config.max_seq_len)
    tc.validate()
    assert tc.seq_len == min(256, config.max_seq_len) and tc.warmup_steps == 100
    assert TrainConfig(steps=1).for_model(config.max_seq_len).warmup_steps == 0
    assert TrainConfig(steps=30).for_model(config.max_seq_len).warmup_steps == 3


def test_a_vocabulary_too_small_for_the_texts_characters_names_the_size_it_needs(tmp_path):
    from gpt_jax.text.sentencepiece_training import train_tokenizer

    text = tmp_path / "many_characters.txt"
    text.write_text("".join(chr(c) * 3 + " " for c in range(0x4E00, 0x4E00 + 400)) * 3, encoding="utf-8")
    with pytest.raises(InputError, match=r"vocab_size=300 is too small for this text: its characters alone need \d+"):
        train_tokenizer([text], 300)
