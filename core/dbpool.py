"""The database pool's check of a connection before it is handed out.

psycopg's own check sends an empty query: a round trip on every request, whatever the state of the
connection. A connection the server ended (a restart, ``pg_terminate_backend``) has something to
read, its last message and the end of the stream, while a healthy idle one has nothing: so the
socket is looked at first (``poll``, no round trip), and only a connection with something waiting
is checked with the query, which fails for a closed one (the pool then opens a new connection).
"""

import select

from psycopg_pool import ConnectionPool


def check_connection(conn) -> None:
    """Raise if ``conn`` is not usable, as ``ConnectionPool.check_connection`` does; without a round
    trip when nothing came from the server since the connection was last used."""
    if conn.closed:
        ConnectionPool.check_connection(conn)  # raises
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)
