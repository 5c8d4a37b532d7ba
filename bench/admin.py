"""The staff console at scale: every admin page with 100,000 jobs, 10,000 failed attempts and
1,000 miners on PostgreSQL (``aitbc_site.testing.scale``), in-process through Django's test client
as a signed-in superuser on one connection (``DATABASE_POOL=false``).

For each page of ``aitbc_site.testing.scale.admin_pages`` (the index, every model's list, the
miners' list sorted by each figure, each model's change page): one warm-up request, then
``--repeats`` (5) timed ones; the median and the slowest, the statements the page ran, each against
the 300 ms goal.

    .venv/bin/python bench/admin.py [--jobs 100000] [--failed 10000] [--miners 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_env, emit, load_average, log, target

GOAL_MS = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--failed", type=int, default=10_000)
    parser.add_argument("--miners", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", default="aitbc_bench_admin")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    with bench_env(args.db, keep_db=args.keep_db, pool=False) as env:
        env.django_setup(ALLOWED_HOSTS="testserver,localhost", LOG_LEVEL="WARNING")
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        from accounts.models import User
        from aitbc_site.testing.scale import admin_pages, seed_network

        started = time.monotonic()
        seeded = seed_network(jobs=args.jobs, failed_attempts=args.failed, miners=args.miners)
        log(f"seeded {seeded} in {time.monotonic() - started:.1f}s")
        with connection.cursor() as cursor:
            # As autovacuum would by now: the visibility map lets counts read indexes alone.
            cursor.execute("VACUUM ANALYZE")
        staff = User.objects.create_superuser("bench-staff", password=None)
        browser = Client()
        browser.force_login(staff)

        pages = {}
        for name, url in admin_pages():
            assert browser.get(url).status_code == 200, url
            times = []
            for _ in range(args.repeats):
                with CaptureQueriesContext(connection) as queries:
                    began = time.perf_counter()
                    response = browser.get(url)
                    times.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, url
            median = round(statistics.median(times), 1)
            pages[name] = {
                "url": url,
                "median_ms": target(median, GOAL_MS, higher_is_better=False),
                "max_ms": round(max(times), 1),
                "queries": len(queries),
            }
            log(f"{name}: {median} ms, {len(queries)} queries")

        emit(
            {
                "seeded": vars(seeded),
                "goal_ms": GOAL_MS,
                "pages_met": sum(page["median_ms"]["met"] for page in pages.values()),
                "pages": len(pages),
                "slowest": max(pages.items(), key=lambda item: item[1]["median_ms"]["value"])[0],
                "by_page": pages,
                "load_average": load_average(),
            }
        )


if __name__ == "__main__":
    main()
