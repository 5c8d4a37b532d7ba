"""OpenAI requests as job payloads, results as OpenAI answers, and streamed text kept whole."""

import base64

import numpy as np
import pytest

from openai_compat import shapes
from openai_compat.errors import OpenAIError
from openai_compat.streams import StreamedChoice

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_max_completion_tokens_wins_over_max_tokens():
    request = shapes.chat_request({**BASE, "max_tokens": 5, "max_completion_tokens": 9})
    assert request.payloads[0]["params"] == {"max_tokens": 9}


def test_parameters_map_to_the_jobs_params_and_unset_ones_are_left_out():
    request = shapes.chat_request({**BASE, "temperature": 0, "top_p": 0.5, "stop": "\n", "seed": 1, "user": "u1"})
    assert request.payloads == [
        {
            "type": "chat",
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "params": {"temperature": 0, "top_p": 0.5, "seed": 1, "stop": "\n"},
            "user": "u1",
        }
    ]


def test_developer_messages_are_system_ones_and_text_parts_join():
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]},
    ]
    request = shapes.chat_request({**BASE, "messages": messages})
    assert request.payloads[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, world"},
    ]


def test_each_choice_is_a_job_sampling_with_its_own_seed():
    request = shapes.chat_request({**BASE, "n": 3, "seed": 10})
    assert [payload["params"]["seed"] for payload in request.payloads] == [10, 11, 12]


def test_completion_prompts_times_n_are_the_choices_in_order():
    request = shapes.completion_request({"model": "m", "prompt": ["a", "b"], "n": 2})
    assert [payload["prompt"] for payload in request.payloads] == ["a", "a", "b", "b"]
    with pytest.raises(OpenAIError) as too_many:
        shapes.completion_request({"model": "m", "prompt": ["a", "b", "c"], "n": 3})
    assert too_many.value.param == "n"


def test_embedding_token_arrays_are_refused_naming_input():
    with pytest.raises(OpenAIError) as refused:
        shapes.embedding_request({"model": "m", "input": [[1, 2, 3]]})
    assert refused.value.param == "input"


def test_base64_embeddings_are_little_endian_float32():
    vector = [0.25, -1.5, 3.0]
    encoded = shapes._encoded(vector, "base64")
    assert np.frombuffer(base64.b64decode(encoded), dtype="<f4").tolist() == vector


@pytest.mark.parametrize(
    "result",
    [
        {"text": "x"},
        {"output": "x"},
        {"message": {"role": "assistant", "content": "x"}},
        "x",
    ],
)
def test_the_text_of_a_result_whichever_miner_wrote_it(result):
    assert shapes.result_text(result) == "x"


def test_streamed_pieces_join_in_index_order():
    choice = StreamedChoice()
    assert choice.add(1, " world") == ""
    assert choice.add(0, "Hello") == "Hello world"
    assert choice.add(1, " world") == ""
    assert choice.beyond_sent("Hello world!") == "!"


def test_a_new_attempt_streams_only_what_goes_beyond_what_was_sent():
    choice = StreamedChoice()
    choice.add(0, "Hel")
    choice.restart()
    assert choice.add(0, "He") == ""
    assert choice.add(1, "llo") == "lo"
