"""The inference engine on a tiny random GPT-2 built on the spot (float32 on CPU, so greedy
decoding is exactly reproducible)."""

import math
import threading

import pytest
import torch

from inference import engine
from inference.engine import Answer, InferenceError, ModelSpec
from inference.testing import build_tiny_gpt2

PROMPTS = [
    "The coordinator matches",
    "A miner claims a job, runs the model, returns the result and",
    "Receipts",
    "Clients submit prompts; workers",
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def _load(tiny_dir, name: str, task: str) -> engine.LoadedModel:
    return engine.load(ModelSpec(name=name, task=task, source_kind="directory", source=str(tiny_dir)), device="cpu")


@pytest.fixture(scope="session")
def text_model(tiny_dir):
    return _load(tiny_dir, "test-tiny-text", "text-generation")


@pytest.fixture(scope="session")
def chat_model(tiny_dir):
    return _load(tiny_dir, "test-tiny-chat", "chat")


@pytest.fixture(scope="session")
def embedding_model(tiny_dir):
    return _load(tiny_dir, "test-tiny-embedding", "embedding")


def run_one(model, payload: dict, **kwargs) -> Answer:
    [answer] = engine.execute(model, [("job", payload)], **kwargs)
    return answer


def generation(prompt: str, **params) -> dict:
    """A generation payload, greedy unless the test asks otherwise: sampling from the random
    model could end a sequence early."""
    return {"type": "inference", "prompt": prompt, "params": {"temperature": 0, **params}}


def text_of(answer: Answer) -> str:
    assert answer.error is None, answer.error
    return answer.result["text"]


# --- generation -------------------------------------------------------------------------------


def test_greedy_generation_is_deterministic(text_model):
    first = run_one(text_model, generation(PROMPTS[0], temperature=0, max_tokens=12))
    second = run_one(text_model, generation(PROMPTS[0], temperature=0, max_tokens=12))

    assert first.result == second.result
    assert first.result["usage"]["completion_tokens"] == 12


def test_batched_greedy_outputs_match_one_by_one(text_model):
    payloads = [generation(prompt, temperature=0, max_tokens=6 + 5 * i) for i, prompt in enumerate(PROMPTS)]
    one_by_one = [run_one(text_model, payload).result for payload in payloads]

    batched = engine.execute(text_model, [(str(i), payload) for i, payload in enumerate(payloads)])

    assert [answer.key for answer in batched] == ["0", "1", "2", "3"]
    assert [answer.result for answer in batched] == one_by_one
    assert [result["usage"]["completion_tokens"] for result in one_by_one] == [6, 11, 16, 21]


def test_same_seed_and_params_reproduce_a_sampled_text(text_model):
    payload = generation(PROMPTS[2], temperature=1.0, top_p=0.9, seed=1234, max_tokens=20)

    assert text_of(run_one(text_model, payload)) == text_of(run_one(text_model, payload))


def test_different_seeds_sample_different_texts(text_model):
    texts = {
        text_of(run_one(text_model, generation(PROMPTS[2], temperature=1.0, seed=seed, max_tokens=20)))
        for seed in (1, 2)
    }

    assert len(texts) == 2


def test_a_sampled_item_does_not_depend_on_its_batch_neighbours(text_model):
    sampled = generation(PROMPTS[0], temperature=1.0, seed=7, max_tokens=15)
    alone = text_of(run_one(text_model, sampled))

    batch = engine.execute(
        text_model,
        [("greedy", generation(PROMPTS[1], temperature=0, max_tokens=5)), ("sampled", sampled),
         ("other", generation(PROMPTS[3], temperature=1.5, seed=8, max_tokens=25))],
    )  # fmt: skip

    assert text_of(batch[1]) == alone


def test_stop_string_ends_the_text_where_it_first_occurs(text_model):
    params = {"temperature": 1.0, "seed": 99, "max_tokens": 40}
    full = text_of(run_one(text_model, generation(PROMPTS[0], **params)))
    stop = full[len(full) // 2 : len(full) // 2 + 3]

    answer = run_one(text_model, generation(PROMPTS[0], **params, stop=[stop, "never produced"]))

    assert answer.result["text"] == full[: full.index(stop)]
    assert answer.result["finish_reason"] == "stop"
    assert answer.result["usage"]["completion_tokens"] < 40


def test_max_tokens_ends_with_finish_reason_length(text_model):
    answer = run_one(text_model, generation(PROMPTS[1], temperature=0, max_tokens=7))

    assert answer.result["finish_reason"] == "length"
    assert answer.result["usage"]["completion_tokens"] == 7
    assert answer.metrics["completion_tokens"] == 7


def test_metrics_count_unpadded_prompt_tokens_and_units(text_model):
    prompt_tokens = len(text_model.tokenizer(PROMPTS[3])["input_ids"])

    short, long = engine.execute(
        text_model, [("a", generation(PROMPTS[2], max_tokens=3)), ("b", generation(PROMPTS[3], max_tokens=4))]
    )

    assert long.metrics["prompt_tokens"] == prompt_tokens
    assert long.metrics["total_tokens"] == long.metrics["units"] == prompt_tokens + 4
    assert long.metrics["unit_type"] == "tokens"
    assert short.metrics["prompt_tokens"] == 1
    assert long.metrics["compute_ms"] > 0


def test_default_max_tokens_comes_from_the_spec(tiny_dir):
    spec = ModelSpec(
        name="test-tiny-short-default", task="text-generation", source_kind="directory", source=str(tiny_dir),
        default_max_tokens=3,
    )  # fmt: skip
    model = engine.load(spec, device="cpu")

    answer = run_one(model, generation(PROMPTS[0], temperature=0))

    assert answer.result["usage"]["completion_tokens"] == 3


def test_chat_messages_are_formatted_with_the_chat_template(chat_model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who pays the miner?"}]
    templated = chat_model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    answer = run_one(chat_model, {"type": "chat", "messages": messages, "params": {"max_tokens": 5}})

    assert answer.metrics["prompt_tokens"] == len(chat_model.tokenizer(templated)["input_ids"])
    assert answer.result["message"] == {"role": "assistant", "content": answer.result["text"]}


def test_a_prompt_for_a_chat_model_is_sent_as_one_user_message(chat_model):
    as_message = run_one(chat_model, {"type": "chat", "messages": [{"role": "user", "content": PROMPTS[0]}]})
    as_prompt = run_one(chat_model, {"type": "chat", "prompt": PROMPTS[0]})

    assert as_prompt.metrics["prompt_tokens"] == as_message.metrics["prompt_tokens"]
    assert "message" in as_prompt.result


def test_a_text_generation_model_reads_the_prompt_raw(text_model):
    answer = run_one(text_model, generation(PROMPTS[0], max_tokens=2))

    assert answer.metrics["prompt_tokens"] == len(text_model.tokenizer(PROMPTS[0])["input_ids"])
    assert "message" not in answer.result


def test_params_at_the_payload_top_level_are_read_and_params_wins(text_model):
    old_style = {"type": "inference", "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0}
    both = {**old_style, "params": {"max_tokens": 6}}

    assert run_one(text_model, old_style).metrics["completion_tokens"] == 4
    assert run_one(text_model, both).metrics["completion_tokens"] == 6


# --- continuous batching -----------------------------------------------------------------------


def record_forward_rows(model, monkeypatch, *, fail_above: int | None = None, error: Exception | None = None):
    """Record the shape (rows, tokens) of every forward pass of ``model``; passes over more than
    ``fail_above`` rows raise ``error`` instead."""
    real_forward, shapes = model.model.forward, []

    def forward(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        if fail_above is not None and len(kwargs["input_ids"]) > fail_above:
            raise error
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", forward)
    return shapes


def steps_until_answered(batch) -> tuple[int, list[Answer]]:
    steps = 0
    while True:
        steps += 1
        if answers := batch.step():
            return steps, answers


@pytest.mark.parametrize(("running", "joining"), [(1, 0), (2, 1)], ids=["shorter-prompt-joins", "longer-prompt-joins"])
def test_a_job_joins_the_running_batch_and_leaves_it_answered_as_soon_as_it_ends(
    text_model, monkeypatch, running, joining
):
    long, short = generation(PROMPTS[running], max_tokens=30), generation(PROMPTS[joining], max_tokens=3)
    long_alone, short_alone = run_one(text_model, long).result, run_one(text_model, short).result
    shapes = record_forward_rows(text_model, monkeypatch)
    events = []

    with engine.Generation(text_model, capacity=4, on_tokens=events.extend) as batch:
        batch.add([("long", long)])
        for _ in range(4):
            assert batch.step() == []
        batch.add([("short", short)])
        steps, [short_answer] = steps_until_answered(batch)
        assert batch.keys == ["long"]
        rest = []
        while batch:
            rest += batch.step()

    # The prefill step gives the first token, each decoding step one more: 3 tokens in 3 steps.
    assert (short_answer.key, steps) == ("short", 3)
    assert short_answer.result == short_alone
    assert [answer.result for answer in rest] == [long_alone]
    assert shapes[4][0] == 1 and shapes[5] == (2, 1), "the newcomer is prefilled alone, then decodes with the batch"
    short_events = [event for event in events if event.key == "short"]
    assert [event.index for event in short_events] == list(range(len(short_events)))
    assert "".join(event.text for event in short_events) == short_alone["text"]


def test_a_newcomer_is_prefilled_before_the_running_rows_decode_again_up_to_a_bound(text_model, monkeypatch):
    monkeypatch.setattr(engine, "PREFILLS_BEFORE_DECODING", 2)
    shapes = record_forward_rows(text_model, monkeypatch)
    with engine.Generation(text_model, capacity=8) as batch:
        batch.add([("running", generation(PROMPTS[0], max_tokens=30))])
        batch.step()
        passes = []
        for i, prompt in enumerate(PROMPTS[1::2] + PROMPTS[1:2]):  # a newcomer before every step
            batch.add([(f"new-{i}", generation(prompt, max_tokens=30))])
            before = len(shapes)
            batch.step()
            passes.append(shapes[before:])

    # one pass a step: the first two newcomers are prefilled in turn (the running rows wait a
    # step each time), then the three rows decode while the third newcomer waits its turn
    assert [len(step) for step in passes] == [1, 1, 1]
    assert [step[0] for step in passes[:2]] == [
        (1, len(text_model.tokenizer(prompt).input_ids)) for prompt in PROMPTS[1::2]
    ]
    assert passes[2][0] == (3, 1)


def test_a_sampled_job_joining_mid_flight_draws_the_same_text_as_alone(text_model):
    sampled = generation(PROMPTS[3], temperature=1.0, top_p=0.9, seed=11, max_tokens=12)
    alone = text_of(run_one(text_model, sampled))

    with engine.Generation(text_model, capacity=2) as batch:
        batch.add([("greedy", generation(PROMPTS[1], max_tokens=40))])
        batch.step()
        batch.add([("sampled", sampled)])
        answers = []
        while batch:
            answers += batch.step()

    assert text_of(next(answer for answer in answers if answer.key == "sampled")) == alone


def test_room_counts_running_and_waiting_jobs_but_not_refused_ones(text_model):
    with engine.Generation(text_model, capacity=3) as batch:
        [refused] = batch.add([("a", generation(PROMPTS[0], max_tokens=20)), ("bad", generation("x", top_p=0))])
        assert refused.error.code == "INVALID_PARAMS"
        assert batch.room == 2
        batch.step()
        batch.add([("b", generation(PROMPTS[1], max_tokens=20)), ("c", generation(PROMPTS[2], max_tokens=20))])
        assert (batch.room, len(batch)) == (0, 3)


def test_a_dropped_job_leaves_the_batch_without_an_answer(text_model):
    kept = generation(PROMPTS[0], max_tokens=8)

    with engine.Generation(text_model, capacity=3) as batch:
        batch.add([("cancelled", generation(PROMPTS[1], max_tokens=20)), ("kept", kept)])
        batch.step()
        batch.drop(["cancelled"])
        assert batch.keys == ["kept"]
        answers = []
        while batch:
            answers += batch.step()

    assert [(answer.key, answer.result) for answer in answers] == [("kept", run_one(text_model, kept).result)]


def test_capacity_halved_by_out_of_memory_comes_back_once_the_batch_empties(text_model, monkeypatch):
    record_forward_rows(text_model, monkeypatch, fail_above=2, error=torch.OutOfMemoryError("out of memory"))

    with engine.Generation(text_model, capacity=4) as batch:
        batch.add([(str(i), generation(PROMPTS[i], max_tokens=5)) for i in range(4)])
        batch.step()  # prefilled in halves
        batch.step()  # four rows decoding run out of memory: two go on, two wait
        assert (batch.capacity, batch.room) == (2, 0)
        answers = []
        while batch:
            answers += batch.step()
        assert batch.capacity == 4

    assert all(answer.error is None for answer in answers) and len(answers) == 4


# --- streaming ----------------------------------------------------------------------------------


def test_token_events_arrive_in_order_and_add_up_to_the_final_text(text_model):
    steps = []
    payloads = [("a", generation(PROMPTS[0], temperature=1.0, seed=5, max_tokens=20)),
                ("b", generation(PROMPTS[1], temperature=0, max_tokens=12))]  # fmt: skip

    answers = engine.execute(text_model, payloads, on_tokens=steps.append)

    for answer in answers:
        events = [event for step in steps for event in step if event.key == answer.key]
        assert [event.index for event in events] == list(range(len(events)))
        assert "".join(event.text for event in events) == answer.result["text"]
        assert all(event.text for event in events)
        assert events[-1].completion_tokens == answer.result["usage"]["completion_tokens"]
        assert {event.max_tokens for event in events} == {20 if answer.key == "a" else 12}
    assert all(len({event.key for event in step}) == len(step) for step in steps)


def test_stop_string_is_never_streamed(text_model):
    params = {"temperature": 1.0, "seed": 99, "max_tokens": 40}
    full = text_of(run_one(text_model, generation(PROMPTS[0], **params)))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    steps = []

    answer = run_one(text_model, generation(PROMPTS[0], **params, stop=stop), on_tokens=steps.append)

    assert "".join(event.text for step in steps for event in step) == answer.result["text"]


def test_a_failing_on_tokens_does_not_fail_the_job(text_model):
    def broken_publisher(events):
        raise ConnectionError("channel layer is down")

    answer = run_one(text_model, generation(PROMPTS[0], max_tokens=5), on_tokens=broken_publisher)

    assert answer.error is None
    assert answer.result["usage"]["completion_tokens"] == 5


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 2.5},
        {"temperature": -0.1},
        {"temperature": "hot"},
        {"top_p": 0},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"max_tokens": 2049},
        {"max_tokens": 10.5},
        {"max_tokens": True},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": [""]},
        {"stop": 5},
        {"seed": -1},
        {"seed": "42"},
    ],
)
def test_invalid_params_fail_only_their_own_item(text_model, params):
    bad, good = engine.execute(
        text_model, [("bad", generation(PROMPTS[0], **params)), ("good", generation(PROMPTS[1], max_tokens=3))]
    )

    assert bad.error.code == "INVALID_PARAMS"
    assert bad.result is None
    assert bad.metrics["units"] == 0
    assert good.error is None
    assert good.result["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "inference"},
        {"type": "inference", "prompt": ""},
        {"type": "inference", "prompt": ["not", "a", "string"]},
        {"type": "chat", "messages": []},
        {"type": "chat", "messages": [{"role": "user"}]},
        {"type": "translation", "prompt": "hi"},
        {"type": "inference", "prompt": "hi", "params": "max_tokens=5"},
        "not an object",
    ],
)
def test_malformed_payloads_are_invalid_payload(text_model, payload):
    assert run_one(text_model, payload).error.code == "INVALID_PAYLOAD"


def test_prompt_plus_max_tokens_over_the_context_is_input_too_long(text_model):
    answer = run_one(text_model, generation(PROMPTS[1], max_tokens=2040))

    assert answer.error.code == "INPUT_TOO_LONG"
    assert "2048" in answer.error.message


def test_default_max_tokens_shrinks_to_the_room_the_context_leaves(text_model):
    prompt = " miner" * 2040
    prompt_tokens = len(text_model.tokenizer(prompt)["input_ids"])
    assert 2048 - 256 < prompt_tokens < 2048

    answer = run_one(text_model, generation(prompt, temperature=0))

    assert answer.result["usage"]["completion_tokens"] == 2048 - prompt_tokens


def test_an_embedding_job_on_a_generation_model_is_unsupported(text_model):
    assert run_one(text_model, {"type": "embedding", "input": "hi"}).error.code == "UNSUPPORTED_TASK"


def test_a_generation_job_on_an_embedding_model_is_unsupported(embedding_model):
    assert run_one(embedding_model, generation("hi")).error.code == "UNSUPPORTED_TASK"


def test_an_out_of_memory_batch_goes_on_in_halves(text_model, monkeypatch):
    payloads = [(str(i), generation(PROMPTS[i % 4], temperature=0, max_tokens=4 + i)) for i in range(5)]
    expected = [run_one(text_model, payload).result for _, payload in payloads]
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    shapes = record_forward_rows(text_model, monkeypatch, fail_above=2, error=error)

    answers = engine.execute(text_model, payloads)

    assert [answer.result for answer in answers] == expected
    rows_tried = [rows for rows, _ in shapes]
    # Prefilled as 2 + 1 + 2; decoding 5 runs out of memory, so 2 go on and 3 wait for room.
    assert rows_tried[:7] == [5, 2, 3, 1, 2, 5, 2]
    assert max(rows_tried[7:]) <= 2


def test_an_item_out_of_memory_even_alone_gets_out_of_memory(text_model, monkeypatch):
    record_forward_rows(text_model, monkeypatch, fail_above=0, error=RuntimeError("CUDA error: out of memory"))

    answers = engine.execute(text_model, [("a", generation("x")), ("b", generation("y"))])

    assert [answer.error.code for answer in answers] == ["OUT_OF_MEMORY", "OUT_OF_MEMORY"]


def test_any_other_batch_failure_is_inference_failed_for_each_item(text_model, monkeypatch):
    record_forward_rows(text_model, monkeypatch, fail_above=0, error=ValueError("shapes do not match\nlong details"))

    answers = engine.execute(text_model, [("a", generation("x")), ("b", generation("y"))])

    assert [answer.error.code for answer in answers] == ["INFERENCE_FAILED", "INFERENCE_FAILED"]
    assert answers[0].error.message == "ValueError: shapes do not match"


def test_should_stop_aborts_unfinished_items_with_miner_shutdown(text_model):
    steps = []

    def stop_after_two_steps():
        steps.append(None)
        return len(steps) > 2

    # Stopping this early leaves the random model no room to end "slow" by itself.
    quick, slow = engine.execute(
        text_model,
        [("quick", generation(PROMPTS[0], max_tokens=1)), ("slow", generation(PROMPTS[1], max_tokens=200))],
        should_stop=stop_after_two_steps,
    )

    assert quick.error is None
    assert quick.result["usage"]["completion_tokens"] == 1
    assert slow.error.code == "MINER_SHUTDOWN"
    assert slow.result is None


def test_should_stop_before_the_batch_runs_nothing(text_model, monkeypatch):
    monkeypatch.setattr(text_model.model, "forward", pytest.fail)

    answer = run_one(text_model, generation("x"), should_stop=lambda: True)

    assert answer.error.code == "MINER_SHUTDOWN"


# --- embeddings ---------------------------------------------------------------------------------


def test_embeddings_are_unit_length(embedding_model):
    answer = run_one(embedding_model, {"type": "embedding", "input": ["a miner", "receipts are signed with Ed25519"]})

    for vector in answer.result["embeddings"]:
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)
        assert len(vector) == answer.result["dimensions"] == 32


def test_identical_input_embeds_to_the_identical_vector(embedding_model):
    first = run_one(embedding_model, {"type": "embedding", "input": "the coordinator"})
    second = run_one(embedding_model, {"type": "embedding", "input": "the coordinator"})

    assert first.result["embeddings"] == second.result["embeddings"]


def test_a_text_embeds_the_same_alone_and_padded_in_a_batch(embedding_model):
    alone = run_one(embedding_model, {"type": "embedding", "input": "miner"})
    batched = run_one(embedding_model, {"type": "embedding", "input": ["miner", "a much longer text than one word"]})

    assert batched.result["embeddings"][0] == pytest.approx(alone.result["embeddings"][0], abs=1e-5)


def test_a_list_input_gets_one_embedding_per_text_in_order(embedding_model):
    texts = [f"text number {i}" for i in range(40)]  # more than one forward-pass chunk

    answer = run_one(embedding_model, {"type": "embedding", "input": texts})

    assert len(answer.result["embeddings"]) == 40
    assert [item["index"] for item in answer.result["data"]] == list(range(40))
    assert answer.result["data"][3]["embedding"] == answer.result["embeddings"][3]
    alone = run_one(embedding_model, {"type": "embedding", "input": texts[3]})
    assert answer.result["embeddings"][3] == pytest.approx(alone.result["embeddings"][0], abs=1e-5)


def test_embedding_metrics_count_input_tokens_only(embedding_model):
    answer = run_one(embedding_model, {"type": "embedding", "prompt": "a miner"})
    tokens = len(embedding_model.tokenizer("a miner")["input_ids"])

    assert answer.result["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert answer.metrics["completion_tokens"] == 0
    assert answer.metrics["units"] == tokens


def test_an_embedding_input_over_the_context_is_input_too_long(embedding_model):
    bad, good = engine.execute(
        embedding_model, [("bad", {"type": "embedding", "input": ["ok", " miner" * 2100]}), ("good", {"input": "ok"})]
    )

    assert bad.error.code == "INPUT_TOO_LONG"
    assert good.error is None


# --- loading ------------------------------------------------------------------------------------


def test_loading_a_loaded_name_returns_the_same_model(text_model, tiny_dir):
    assert _load(tiny_dir, "test-tiny-text", "text-generation") is text_model
    assert "test-tiny-text" in engine.loaded_models()


def test_concurrent_first_loads_load_once(tiny_dir, monkeypatch):
    real_load, calls, results = engine._load, [], []

    def counting_load(*args, **kwargs):
        calls.append(None)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine, "_load", counting_load)
    threads = [
        threading.Thread(target=lambda: results.append(_load(tiny_dir, "test-tiny-concurrent", "text-generation")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(calls) == 1
    assert len({id(model) for model in results}) == 1


def test_a_loaded_model_reports_its_device_and_dtype(text_model):
    assert text_model.device == "cpu"
    assert text_model.dtype == torch.float32
    assert text_model.spec.name == "test-tiny-text"


def test_a_missing_directory_is_model_not_loaded(tmp_path):
    spec = ModelSpec(name="test-missing", task="chat", source_kind="directory", source=str(tmp_path / "nowhere"))

    with pytest.raises(InferenceError) as raised:
        engine.load(spec)

    assert raised.value.code == "MODEL_NOT_LOADED"
    assert "test-missing" not in engine.loaded_models()


def test_an_uninstalled_package_is_model_not_loaded():
    spec = ModelSpec(name="test-no-package", task="chat", source_kind="package", source="no_such_weights_package")

    with pytest.raises(InferenceError) as raised:
        engine.load(spec)

    assert raised.value.code == "MODEL_NOT_LOADED"


def test_model_spec_from_dict_ignores_unknown_keys():
    spec = ModelSpec.from_dict(
        {"name": "m", "task": "chat", "source_kind": "hub", "source": "org/m", "max_tokens": 512, "price": "0.1"}
    )

    assert spec == ModelSpec(name="m", task="chat", source_kind="hub", source="org/m", max_tokens=512)


def test_model_spec_rejects_an_unknown_task():
    with pytest.raises(ValueError, match="task"):
        ModelSpec(name="m", task="translation", source_kind="hub", source="org/m")


@pytest.mark.skipif(torch.cuda.is_available(), reason="describes a CPU-only host")
def test_gpu_info_without_a_gpu_reports_the_cpu_and_its_memory():
    info = engine.gpu_info()

    assert info["gpu_name"] == "cpu"
    assert info["memory_mb"] > 0
