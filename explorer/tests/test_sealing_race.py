"""Sealers racing on PostgreSQL: one chain, every receipt sealed exactly once."""

import threading
import time

import pytest
from django.db import connection, connections

from accounts.models import User
from explorer import selectors, services
from explorer.models import Block, BlockLeaf, PendingLeaf
from explorer.tests.conftest import issue_receipts
from jobs.models import Receipt
from miners.capabilities import Capabilities
from miners.services import miner_register

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SEALERS = 4
BATCHES = 25


def in_thread(work, errors: list):
    def run():
        try:
            work()
        except Exception as error:  # collected and asserted on in the test
            errors.append(error)
        finally:
            connections.close_all()

    return threading.Thread(target=run)


def test_concurrent_sealers_never_fork_a_height_nor_seal_a_receipt_twice(settings):
    settings.BLOCK_MAX_LEAVES = 7
    miner, _ = miner_register(
        owner=User.objects.get_or_create(username="gpu-owner")[0],
        miner_id="miner-1",
        capabilities=Capabilities(models=("m",)),
    )
    issue_receipts(30, miner=miner)
    producing = threading.Event()
    producing.set()
    errors: list[Exception] = []

    def seal_until_done():
        while producing.is_set():
            services.blocks_seal_pending()
            time.sleep(0.001)

    def produce():
        for _ in range(BATCHES):
            issue_receipts(3, miner=miner)
        producing.clear()

    threads = [in_thread(seal_until_done, errors) for _ in range(SEALERS)] + [in_thread(produce, errors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    services.blocks_seal_pending()

    receipts = Receipt.objects.count()
    assert receipts == 30 + 3 * BATCHES
    heights = list(Block.objects.order_by("height").values_list("height", flat=True))
    assert heights == list(range(len(heights)))
    assert len(heights) > 2, "the sealers did not race"
    assert BlockLeaf.objects.count() == receipts
    assert BlockLeaf.objects.values("ref").distinct().count() == receipts
    assert list(selectors.chain_problems()) == []


def sealed_once_and_verified(expected: int) -> None:
    assert not PendingLeaf.objects.exists()
    assert BlockLeaf.objects.count() == expected
    assert BlockLeaf.objects.values("kind", "ref").distinct().count() == expected
    heights = list(Block.objects.order_by("height").values_list("height", flat=True))
    assert heights == list(range(len(heights)))
    assert list(selectors.chain_problems()) == []


def test_a_run_out_of_time_stops_between_blocks_and_the_next_run_goes_on(settings, monkeypatch):
    settings.BLOCK_MAX_LEAVES = 5
    issue_receipts(30)
    insert_leaves = services._insert_leaves

    def slow_insert(block, leaves):
        time.sleep(0.2)
        insert_leaves(block, leaves)

    monkeypatch.setattr(services, "_insert_leaves", slow_insert)
    started = time.monotonic()
    first = services.blocks_seal_pending(seconds=0.3)
    took = time.monotonic() - started

    assert 1 <= len(first) < 6, "the run stopped when its time was up, between blocks"
    assert took < 0.3 + 0.5
    assert PendingLeaf.objects.count() == 30 - 5 * len(first)
    rest = services.blocks_seal_pending()
    assert [block.height for block in first + rest] == list(range(1, 7))
    sealed_once_and_verified(30)


def test_a_run_killed_inside_a_block_loses_nothing_and_the_next_seals_each_item_once(settings, monkeypatch):
    settings.BLOCK_MAX_LEAVES = 5
    issue_receipts(12)
    insert_leaves = services._insert_leaves
    inside, backend = threading.Event(), []
    errors: list[Exception] = []

    def insert_then_hang(block, leaves):
        insert_leaves(block, leaves)
        if block.height == 2:  # the second block's leaves are written, its transaction still open
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backend.append(cursor.fetchone()[0])
            inside.set()
            time.sleep(0.5)  # killed meanwhile, as a worker whose process dies

    monkeypatch.setattr(services, "_insert_leaves", insert_then_hang)
    sealer = in_thread(services.blocks_seal_pending, errors)
    sealer.start()
    assert inside.wait(timeout=30)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", backend)
    sealer.join(timeout=30)
    monkeypatch.setattr(services, "_insert_leaves", insert_leaves)

    assert errors, "the killed run ended in an error"
    assert list(Block.objects.order_by("height").values_list("height", "tx_count")) == [(0, 0), (1, 5)]
    assert PendingLeaf.objects.count() == 7
    assert [block.tx_count for block in services.blocks_seal_pending()] == [5, 2]
    sealed_once_and_verified(12)
