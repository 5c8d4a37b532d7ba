"""The original AITBC CLI's explorer commands, sent exactly as it sends them: ``client receipts
--job-id`` and the March CLI's ``blockchain blocks`` on ``/api/v1/blocks``."""

import pytest
from rest_framework.test import APIClient

from explorer import services

pytestmark = pytest.mark.django_db


def test_receipts_filtered_by_job_id(make_receipts, make_api):
    cli = make_api("client", "cli-client")
    receipts = make_receipts(3)
    job_id = receipts[1].document["job_id"]

    response = cli.get("/v1/explorer/receipts", {"limit": 10, "job_id": job_id})

    assert response.status_code == 200
    assert [item["jobId"] for item in response.json()["items"]] == [job_id]


def test_receipts_refuse_a_job_id_that_is_not_one(make_receipts):
    make_receipts(1)

    response = APIClient().get("/v1/explorer/receipts", {"job_id": "not-a-job"})

    assert response.status_code == 422


def test_api_v1_blocks_answers_like_the_explorer(make_receipts, settings):
    settings.BLOCK_MAX_LEAVES = 1
    make_receipts(3)
    services.blocks_seal_pending()
    anonymous = APIClient()

    response = anonymous.get("/api/v1/blocks", {"limit": 2, "chain_id": "ait-mainnet"})

    assert response.status_code == 200
    assert response.json() == anonymous.get("/v1/explorer/blocks", {"limit": 2}).json()
    assert [block["height"] for block in response.json()["items"]] == [3, 2]
