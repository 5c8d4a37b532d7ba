"""Django's PostgreSQL backend, its connection pool checking connections with ``core.dbpool``'s
check (no round trip for a healthy idle connection) where ``CONN_HEALTH_CHECKS`` asks for a check."""

from django.db.backends.postgresql import base

from core.dbpool import check_connection


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self):
        pool = super().pool
        if pool is not None and self.settings_dict["CONN_HEALTH_CHECKS"]:
            # psycopg_pool keeps its check here; Django gives it psycopg's, a query every time.
            pool._check = check_connection
        return pool
