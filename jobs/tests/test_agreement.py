"""When answers agree (``jobs.agreement``): pure functions, no database."""

import pytest

from jobs.agreement import EXACT, SEMANTIC, agree, consensus, cosine, majority, normalise_text


def test_exact_agreement_ignores_whitespace_only():
    assert agree({"text": " Paris  is\nthe capital. "}, {"output": "Paris is the capital."}, agreement=EXACT)
    assert not agree({"text": "Paris is the capital."}, {"text": "paris is the capital."}, agreement=EXACT)
    assert normalise_text("\ta \n b  ") == "a b"


def test_exact_agreement_of_answers_without_text_compares_their_json():
    assert agree({"embeddings": [[1, 2]]}, {"embeddings": [[1, 2]]}, agreement=EXACT)
    assert not agree({"embeddings": [[1, 2]]}, {"embeddings": [[1, 2.5]]}, agreement=EXACT)


def test_embeddings_agree_when_every_vector_is_close_enough():
    near = {"embeddings": [[1.0, 0.0], [0.0, 1.0]]}
    same_direction = {"embeddings": [[2.0, 0.01], [0.0, 3.0]]}
    one_off = {"embeddings": [[2.0, 0.01], [1.0, 0.0]]}

    assert agree(near, same_direction, agreement=SEMANTIC, threshold=0.99)
    assert not agree(near, one_off, agreement=SEMANTIC, threshold=0.99)
    assert not agree(near, {"embeddings": [[1.0, 0.0]]}, agreement=SEMANTIC, threshold=0.5)
    assert not agree(near, {"text": "hello"}, agreement=SEMANTIC, threshold=0.5)
    assert cosine([1, 0], [0, 1]) == 0


def test_openai_shaped_embeddings_are_read_too():
    ours = {"embeddings": [[0.6, 0.8]]}
    theirs = {"data": [{"object": "embedding", "embedding": [0.6, 0.8]}]}
    assert agree(ours, theirs, agreement=SEMANTIC, threshold=0.999)


def test_sampled_text_agrees_by_the_words_it_shares():
    a = {"text": "The capital of France is Paris."}
    b = {"text": "Paris is the capital of France!"}
    other = {"text": "Bananas are yellow and grow in bunches."}

    assert agree(a, b, agreement=SEMANTIC, threshold=0.8)
    assert not agree(a, other, agreement=SEMANTIC, threshold=0.2)


def test_consensus_is_the_largest_agreeing_group_and_says_whether_it_is_enough():
    results = [{"text": "lie"}, {"text": "Paris."}, {"text": " Paris. "}]

    found = consensus(results, agreement=EXACT, required=2)
    assert found.group == (1, 2) and found.reached and found.representative == 1
    assert found.dissenters(3) == (0,)
    assert not consensus(results, agreement=EXACT, required=3).reached


def test_no_two_answers_alike_is_no_consensus():
    found = consensus([{"text": "a"}, {"text": "b"}, {"text": "c"}], agreement=EXACT, required=majority(3))
    assert found.group == (0,) and not found.reached
    assert not consensus([], agreement=EXACT, required=1).reached


def test_semantic_groups_form_around_a_representative():
    # b is close to both a and c, which are not close to each other: b's group is the largest.
    a, b, c = ({"embeddings": [v]} for v in ([1.0, 0.0], [0.8, 0.6], [0.28, 0.96]))
    found = consensus([a, b, c], agreement=SEMANTIC, threshold=0.79, required=2)
    assert found.group == (1, 0, 2) and found.representative == 1


@pytest.mark.parametrize("count, needed", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_a_majority_outvotes_the_rest(count, needed):
    assert majority(count) == needed


def test_an_unknown_agreement_is_refused():
    with pytest.raises(ValueError):
        agree({"text": "a"}, {"text": "a"}, agreement="fuzzy")
