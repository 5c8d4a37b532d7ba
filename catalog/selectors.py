import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from catalog.models import CatalogModel, ModelTask
from miners.models import MinerStatus, ServedModel


class _Snapshot:
    """A value read from the database and reused for ``MODEL_CATALOG_CACHE_SECONDS`` in this process:
    the submit path consults the catalog on every request.

    It is read without holding the lock: a caller may hold a pooled connection (inside a
    submit's transaction) when it asks, and a reader holding the lock while it waits for a
    connection would hold up every one of them until the pool gave up. Callers arriving while it
    is stale may each read it; the latest read is kept."""

    def __init__(self, load: Callable[[], object]):
        self._load = load
        self._lock = threading.Lock()
        self._value, self._read_at = None, float("-inf")

    def get(self):
        with self._lock:
            if time.monotonic() - self._read_at < settings.MODEL_CATALOG_CACHE_SECONDS:
                return self._value
        started = time.monotonic()
        value = self._load()
        with self._lock:
            if started >= self._read_at:
                self._value, self._read_at = value, started
        return value


_catalog = _Snapshot(lambda: {entry.name: entry for entry in CatalogModel.objects.all()})
_cluster_models = _Snapshot(
    lambda: frozenset(
        ServedModel.objects.filter(
            miner__in_cluster=True, miner__status=MinerStatus.ONLINE, miner__draining=False
        ).values_list("name", flat=True)
    )
)


def catalog_entry(name: str) -> CatalogModel | None:
    return _catalog.get().get(name)


def catalog_names() -> frozenset[str]:
    """Every model of the catalog, enabled or not."""
    return frozenset(_catalog.get())


def default_model(*, embedding: bool) -> str | None:
    """The model a job naming none runs on: for generation ``JOB_DEFAULT_MODEL``, else the
    catalog's first enabled chat model (then text-generation model); for embeddings the first
    enabled embedding model. None when there is none."""
    if not embedding and settings.JOB_DEFAULT_MODEL:
        return settings.JOB_DEFAULT_MODEL
    tasks = [ModelTask.EMBEDDING] if embedding else [ModelTask.CHAT, ModelTask.TEXT_GENERATION]
    entries = [entry for entry in _catalog.get().values() if entry.enabled]
    for task in tasks:
        names = sorted(entry.name for entry in entries if entry.task == task)
        if names:
            return names[0]
    return None


def cluster_served_models() -> frozenset[str]:
    """Models that an online in-cluster worker serves: their jobs are announced on the broker."""
    return _cluster_models.get()


def catalog_with_miner_counts(*, enabled_only: bool = True) -> QuerySet[CatalogModel]:
    """The catalog, each model annotated with ``online_miners``: how many online miners serve it."""
    serving = (
        ServedModel.objects.filter(name=OuterRef("name"), miner__status=MinerStatus.ONLINE, miner__draining=False)
        .order_by()
        .values("name")
        .annotate(n=Count("miner", distinct=True))
        .values("n")
    )
    models = CatalogModel.objects.annotate(
        online_miners=Coalesce(Subquery(serving, output_field=IntegerField()), 0)
    ).order_by("name")
    return models.filter(enabled=True) if enabled_only else models
