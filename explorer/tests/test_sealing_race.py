"""Sealers racing on PostgreSQL: one chain, every receipt sealed exactly once."""

import threading
import time

import pytest
from django.db import connections

from accounts.services import user_get_or_create
from explorer import selectors, services
from explorer.models import Block, BlockLeaf, Receipt
from explorer.tests.conftest import issue_receipts
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
        owner=user_get_or_create(username="gpu-owner"), miner_id="miner-1", capabilities=Capabilities(models=("m",))
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
