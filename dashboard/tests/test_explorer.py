import pytest

from explorer.services import block_seal
from payments.selectors import wallet_of


@pytest.fixture
def sealed(alice, finished_job):
    """Genesis, then a block sealing three jobs' receipts and ledger transactions."""
    jobs = [finished_job(alice, f"answer {i}") for i in range(3)]
    block = block_seal()
    assert block is not None and block.height == 1
    return jobs, block


def test_blocks_list_is_public_and_newest_first(client, sealed):
    _, block = sealed
    response = client.get("/explorer/")
    assert [b.height for b in response.context["page"].object_list] == [block.height, 0]
    assert f'href="/explorer/blocks/{block.height}/"'.encode() in response.content


def test_block_page_lists_its_sealed_items(client, sealed):
    _, block = sealed
    response = client.get(f"/explorer/blocks/{block.height}/")
    assert response.status_code == 200
    leaves = list(response.context["leaves"])
    assert len(leaves) == block.tx_count > 0
    assert block.merkle_root.encode() in response.content
    assert f"/explorer/transactions/{leaves[0].leaf_hash}/".encode() in response.content


def test_missing_block_is_not_found(client, db):
    assert client.get("/explorer/blocks/999/").status_code == 404


def test_transaction_page_shows_the_document_and_its_proof(client, sealed):
    _, block = sealed
    leaf = block.leaves.order_by("position").first()
    response = client.get(f"/explorer/transactions/{leaf.leaf_hash}/")
    assert response.status_code == 200
    assert response.context["proof"]["merkle_root"] == block.merkle_root
    assert leaf.ref.encode() in response.content
    assert client.get(f"/explorer/transactions/{'0' * 64}/").status_code == 404


def test_address_page_shows_balance_and_entries(client, alice, sealed):
    wallet = wallet_of(user=alice)
    response = client.get(f"/explorer/addresses/{wallet.address}/")
    assert response.status_code == 200
    assert f"{wallet.balance} AITBC".encode() in response.content
    assert response.context["entries"].paginator.count > 0
    assert client.get("/explorer/addresses/ait1nothing/").status_code == 404


def test_receipts_page_lists_receipts_with_their_block(client, sealed):
    jobs, block = sealed
    rows = client.get("/explorer/receipts/").context["rows"]
    assert {row["document"]["job_id"] for row in rows} == {str(job.pk) for job in jobs}
    assert {row["receipt"].block_height for row in rows} == {block.height}


def test_json_aliases_without_a_slash_still_answer_json(client, sealed):
    _, block = sealed
    assert client.get("/explorer/blocks")["Content-Type"] == "application/json"
    assert client.get(f"/explorer/blocks/{block.height}").json()["height"] == block.height
    assert client.get("/explorer/receipts")["Content-Type"] == "application/json"
    assert client.get("/explorer/receipts/")["Content-Type"].startswith("text/html")
    assert client.get("/explorer/blocks/")["Location"] == "/explorer/"


@pytest.mark.parametrize("url", ["/explorer/", "/explorer/receipts/"])
def test_explorer_lists_read_a_fixed_number_of_queries(client, sealed, url, django_assert_max_num_queries):
    # The block list shows the network figures (seven queries, uncached).
    with django_assert_max_num_queries(9):
        assert client.get(url).status_code == 200


def test_address_page_reads_a_fixed_number_of_queries(client, alice, sealed, django_assert_max_num_queries):
    wallet = wallet_of(user=alice)
    with django_assert_max_num_queries(8):
        assert client.get(f"/explorer/addresses/{wallet.address}/").status_code == 200
