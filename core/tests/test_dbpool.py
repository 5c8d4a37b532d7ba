"""The pool's check: no round trip for a healthy idle connection; a connection the server ended is
refused (and so replaced by the pool)."""

import time

import psycopg
import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from core.dbpool import check_connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def raw_connection():
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    conn = psycopg.connect(**params, autocommit=True)
    conn.execute("SELECT 1")
    yield conn
    conn.close()


def test_a_healthy_idle_connection_is_passed_without_a_query(raw_connection, monkeypatch):
    queried = []
    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(queried.append))
    check_connection(raw_connection)
    assert queried == []


def test_a_connection_the_server_ended_is_refused(raw_connection):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [raw_connection.info.backend_pid])
    time.sleep(0.2)  # the server's last message and the end of the stream arrive
    with pytest.raises(psycopg.OperationalError):
        check_connection(raw_connection)


def test_a_closed_connection_is_refused(raw_connection):
    raw_connection.close()
    with pytest.raises(psycopg.OperationalError):
        check_connection(raw_connection)


def test_the_pool_checks_with_this_check():
    if connection.pool is None:
        pytest.skip("no pool in this configuration")
    assert connection.pool._check is check_connection
