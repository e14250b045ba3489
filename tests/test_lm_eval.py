"""lm-eval's `local-completions` against `gpt-jax serve`, end to end, on three tiny local tasks (one of each request
kind): multiple choice (`loglikelihood`), perplexity (`loglikelihood_rolling`) and `generate_until` with six stop
strings (five of the task's and the EOS string lm-eval adds). The tokenizer is the server's own, through its
/tokenize endpoints (`tokenizer_backend=remote`). Every log-likelihood lm-eval records equals `score_ids` on the ids
it sent, and every generation equals greedy `generate_ids` cut at the first stop string."""

from __future__ import annotations

import json
import math

import pytest

from gpt_jax.text.detokenize import IncrementalDecoder
from gpt_jax.text.stops import cut_at_stop

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("tenacity")

CHOICES = [
    {"question": "Who loves Juliet?", "choices": ["Romeo", "Hamlet", "the Duke"], "answer": 0},
    {"question": "What light through yonder window breaks?", "choices": ["the sun", "a candle"], "answer": 0},
    {"question": "To be, or not to be:", "choices": ["that is the question", "a fine day"], "answer": 0},
]
PASSAGES = [
    {"text": "Now is the winter of our discontent made glorious summer by this sun of York."},
    {"text": "O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name."},
]
PROMPTS = [{"prompt": "ROMEO:\n"}, {"prompt": "KING RICHARD III:\n"}]
MAX_GEN_TOKS = 24


def write_tasks(directory, stops: list[str]) -> None:
    """Three task configs over local JSON-lines files."""

    def data(name, rows):
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test"}

    tasks = {
        "gptjax_choice": {
            **data("choice", CHOICES),
            "output_type": "multiple_choice",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}",
            "metric_list": [{"metric": "acc"}],
        },
        "gptjax_rolling": {
            **data("rolling", PASSAGES),
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "word_perplexity"}],
        },
        "gptjax_until": {
            **data("until", PROMPTS),
            "output_type": "generate_until",
            "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{prompt}}",
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            "generation_kwargs": {"until": stops, "max_gen_toks": MAX_GEN_TOKS, "do_sample": False},
        },
    }
    for name, config in tasks.items():
        (directory / f"{name}.yaml").write_text(json.dumps({"task": name, **config}))


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of a request into ids: spaces that end the context go to the continuation; the
    continuation is what the whole text's ids add to the context's."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation, add_special_tokens=False)
    context_ids = tok.encode(context, add_special_tokens=False)
    return context_ids, whole[len(context_ids) :]


@pytest.mark.slow
def test_lm_eval_local_completions_runs_three_kinds_of_task_and_matches_score_ids(server, served_gen, tmp_path,
                                                                                 monkeypatch):
    gen, tok = served_gen, served_gen.tokenizer
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    # the task's five stop strings: three that never occur and a word of each prompt's greedy text, so stops fire
    stops = ["<never-1>", "<never-2>", "<never-3>"]
    for p in PROMPTS:
        ids = tok.encode(p["prompt"], add_special_tokens=False)
        greedy = gen.generate_ids([ids], max_new_tokens=MAX_GEN_TOKS, temperature=0.0).token_ids[0]
        words = "".join(IncrementalDecoder(tok, ids).decode_all(greedy)).split()
        stops.append(words[min(3, len(words) - 1)])
    write_tasks(tmp_path, stops)

    from lm_eval.tasks import TaskManager

    model_args = (
        f"model=shakespeare,base_url={server.url}/v1/completions,tokenizer_backend=remote,"
        f"max_length={server.engine.max_len},num_concurrent=2,max_retries=1,timeout=120"
    )
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=model_args,
        tasks=["gptjax_choice", "gptjax_rolling", "gptjax_until"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
        batch_size=1,
    )
    samples = out["samples"]
    assert len(samples["gptjax_choice"]) == len(CHOICES) and len(samples["gptjax_until"]) == len(PROMPTS)

    for sample in samples["gptjax_choice"]:  # one loglikelihood request per choice
        for args, resp in zip(sample["arguments"], sample["resps"]):
            context, continuation = args
            context_ids, continuation_ids = encode_pair(tok, context, continuation)
            want = gen.score_ids([context_ids + continuation_ids]).token_logprobs[0][-len(continuation_ids) :]
            assert resp[0][0] == pytest.approx(sum(want), abs=1e-4)

    for sample, passage in zip(samples["gptjax_rolling"], PASSAGES):  # shorter than a window: BOS + the text
        assert sample["resps"][0][0] == pytest.approx(gen.score(passage["text"]).log_likelihood[0], abs=1e-4)
    assert math.isfinite(out["results"]["gptjax_rolling"]["word_perplexity,none"])

    for sample in samples["gptjax_until"]:
        prompt = sample["doc"]["prompt"]
        sent_stops = sample["arguments"][0][1]["until"]
        assert len(sent_stops) == 5 and tok.id_to_piece(tok.eos_id) == "</s>"  # lm-eval adds "</s>": six
        ids = tok.encode(prompt, add_special_tokens=False)
        greedy = gen.generate_ids([ids], max_new_tokens=MAX_GEN_TOKS, temperature=0.0).token_ids[0]
        text, _, stopped = cut_at_stop(IncrementalDecoder(tok, ids).decode_all(greedy), sent_stops + ["</s>"])
        assert stopped and sample["resps"][0][0] == text
