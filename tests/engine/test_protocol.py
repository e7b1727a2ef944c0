"""The engine-core messages: every one survives the codec, and malformed bytes are refused."""

from __future__ import annotations

import msgspec
import pytest

from heron.config import EngineConfig, SchedulerConfig
from heron.engine.protocol import (
    AbortRequests,
    Embeddings,
    EmbedRequest,
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    EngineStats,
    Failed,
    Fatal,
    LoadModel,
    PromptLogprobs,
    Ready,
    Rejected,
    Shutdown,
    TokenLogprobs,
    decode_from_core,
    decode_to_core,
    encode,
)
from heron.sampling_params import SamplingParams


def test_messages_to_the_core_round_trip() -> None:
    params = SamplingParams(
        temperature=0.5, stop=["x"], stop_token_ids=[3], logit_bias={7: -100.0}, seed=11
    )
    config = EngineConfig(scheduler=SchedulerConfig(max_num_batched_tokens=64))
    for msg in [
        LoadModel("/m.gguf", config, [2, 5]),
        EngineCoreRequest("r#1", [1, 2, 3], params, 12.5, 0, "salt", "r#0"),
        EmbedRequest("e", [[1, 2], [3]]),
        AbortRequests(["a", "b"]),
        Shutdown(),
    ]:
        back = decode_to_core(encode(msg))
        assert type(back) is type(msg) and back == msg
    # Typed all the way down: the params and the config come back as their own classes.
    req = decode_to_core(encode(EngineCoreRequest("r", [1], params)))
    assert isinstance(req, EngineCoreRequest) and req.sampling_params == params
    assert req.sampling_params.logit_bias == {7: -100.0}


def test_messages_from_the_core_round_trip() -> None:
    out = EngineCoreOutput("r", [5], [TokenLogprobs(-0.1, 1, [5, 6], [-0.1, -2.5])], "stop", 5, 8)
    scored = PromptLogprobs([-1.5, -0.25], [3, 1], [[7], [2]], [[-0.5], [-0.25]])
    for msg in [
        Ready(2048),
        Ready(256, 384),
        Fatal("boom"),
        EngineCoreOutputs([out, EngineCoreOutput("s", [9])], EngineStats(num_running=2)),
        EngineCoreOutputs([EngineCoreOutput("p", [4], prompt_logprobs=scored)]),
        Embeddings("e", [[0.5, -1.0]]),
        EngineStats(num_waiting=3, kv_cache_usage=0.25),
        Rejected("r", "bad"),
        Failed(["r", "s"], "engine error"),
    ]:
        back = decode_from_core(encode(msg))
        assert type(back) is type(msg) and back == msg


def test_only_new_tokens_travel() -> None:
    """A running request's output is its new ids and counters (an array, no field names):
    a few bytes, whatever it produced before."""
    one = encode(EngineCoreOutputs([EngineCoreOutput("r", [42])]))
    two = encode(EngineCoreOutputs([EngineCoreOutput("r", [42]), EngineCoreOutput("s", [7])]))
    assert len(two) - len(one) <= 12


def test_malformed_messages_are_refused() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_to_core(b"\xc1garbage")
    with pytest.raises(msgspec.ValidationError):
        decode_to_core(encode(Ready(1)))  # a core -> front end message going the wrong way
    bad = msgspec.msgpack.encode({"type": "EngineCoreRequest", "request_id": "r"})
    with pytest.raises(msgspec.ValidationError):
        decode_to_core(bad)
    # SamplingParams' own validation runs on decode too.
    raw = msgspec.msgpack.encode(
        {
            "type": "EngineCoreRequest",
            "request_id": "r",
            "prompt_token_ids": [1],
            "sampling_params": {"temperature": -1.0},
        }
    )
    with pytest.raises((msgspec.ValidationError, ValueError)):
        decode_to_core(raw)
