"""Which miner may run which job: the one rule, in the two forms the code needs.

A miner may run a queued job when it takes work (online, not draining), serves the job's model,
and meets each constraint the job sets (a constraint left empty is met by every miner). A miner
that declares no models at all (the original AITBC CLI's ``miner register``, an Ollama miner)
serves every model outside the catalog, as the original coordinator offered any job to any
miner; a catalog model is only ever run by the miners that declare it, and agents' tasks
(``AGENT_TASK_MODEL``) by agents. The constraints:

- ``min_vram_gb``: the miner's VRAM is at least that;
- ``cuda``: the miner's CUDA version code is at least the job's (a miner that reported no CUDA
  version counts as 0);
- ``region``: the miner's region, compared case-insensitively;
- ``max_price``: the miner's price is at most that (a miner that set no price meets any);
- ``gpu``: the text occurs in the miner's GPU name, case-insensitively.

Beyond the client's constraints:

- a job pinned to a miner (``req_miner``: a verified job's attempt, a canary) is offered to that
  miner only;
- a job with ``req_min_reputation`` only to a miner whose cached reputation (``Miner.reputation_score``)
  is at least that (a miner with no reputation yet has none);
- an attempt of a verified job (``parent`` set) never to a miner whose owner holds, or held, an
  attempt of the same job, so its answers come from distinct owners;
- a suspended miner (``Miner.suspended_at``) claims nothing.

Where several miners could take a job, the claim prefers those of higher reputation: a miner
whose stored reputation r is below 1 claims a job only once it has waited
``MATCHING_REPUTATION_HEADSTART_SECONDS`` × (1 − r) (``PREFERS_REPUTATION``; a miner with no
reputation yet waits for nothing), so better miners polling meanwhile take it first.

``MINER_MEETS_JOB`` states the constraints in SQL over a job row ``j`` and a miner row ``m``; the
claim function ``jobs_claim`` (``CLAIM_FUNCTION``, installed by migration) is built from it, so
changing the rule here takes a migration that runs ``create_claim_function`` again.
``jobs_for_miner`` and ``miners_for_job`` are the same rule as ORM filters: the portable claim
(SQLite), a miner's list of available jobs, and a queued job's outlook use them.
``jobs/tests/test_matching.py`` holds all three to one table of cases on both backends.
"""

from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Coalesce

from catalog.models import CatalogModel
from jobs.models import Job
from miners.capabilities import AGENT_TASK_MODEL
from miners.models import Miner, MinerStatus, ServedModel

MINER_MEETS_JOB = """
    (j.req_min_vram_gb IS NULL OR j.req_min_vram_gb <= m.vram_gb)
    AND (j.req_cuda_code IS NULL OR j.req_cuda_code <= coalesce(m.cuda_code, 0))
    AND (j.req_region = '' OR lower(j.req_region) = lower(m.region))
    AND (j.req_max_price IS NULL OR m.price IS NULL OR j.req_max_price >= m.price)
    AND (j.req_gpu = '' OR strpos(lower(m.gpu_name), lower(j.req_gpu)) > 0)
    AND (j.req_miner_id IS NULL OR j.req_miner_id = m.id)
    AND (j.req_min_reputation IS NULL OR coalesce(m.reputation_score, -1) >= j.req_min_reputation)
    AND (j.parent_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM jobs_job s JOIN miners_miner sm ON sm.id = s.miner_id
        WHERE s.parent_id = j.parent_id AND sm.owner_id = m.owner_id
    ))
"""

# A claim as one call on PostgreSQL: lock the miner's row (its concurrency limit holds against
# parallel polls), then lease the best queued jobs it can run. Each statement of a volatile
# PL/pgSQL function takes a new snapshot, so the running-jobs count sees every claim committed
# before the lock was granted. Outside a transaction the call is its own transaction: a claim is
# one round trip. The queue is walked through its partial index per served model; the plans are
# generic (the status tests are literals), made once per connection.
#
# While attempts of verified jobs wait in the queue, claims by miners of one owner take turns (a
# transaction-level advisory lock on the owner): the distinct-owner rule reads the attempts
# committed before, so two miners of one owner can't take two attempts of one job at once.
PREFERS_REPUTATION = """
    (m.reputation_score IS NULL OR j.created_at <= p_now - p_headstart * (1 - m.reputation_score) * interval '1 second')
"""
_LEASE_PICKED = """
    UPDATE jobs_job j SET status = 'running', miner_id = p_miner, attempt = j.attempt + 1,
        lease_token = gen_random_uuid()::text, lease_expires_at = p_lease_until, started_at = p_now,
        progress = 0, updated_at = p_now
    FROM picked WHERE j.id = picked.id
    RETURNING j.*;
"""
# Of the candidates, the best attempt of each verified job only (a miner takes one attempt of a job).
_ONE_ATTEMPT_PER_JOB = """
            SELECT one.id FROM (
                SELECT DISTINCT ON (coalesce(c.parent_id, c.id)) c.id, c.rank_at FROM candidates c
                ORDER BY coalesce(c.parent_id, c.id), c.rank_at
            ) one
            ORDER BY one.rank_at
"""
_FREE_SLOTS = """LEAST(p_limit, GREATEST(0, m.max_concurrent_jobs - (
            SELECT count(*) FROM jobs_job r WHERE r.miner_id = p_miner AND r.status = 'running'
        )))"""
CLAIM_FUNCTION = f"""
CREATE OR REPLACE FUNCTION jobs_claim(
    p_miner bigint, p_limit integer, p_job_id uuid, p_models text[], p_now timestamptz, p_lease_until timestamptz,
    p_headstart double precision
) RETURNS SETOF jobs_job LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    m record;
BEGIN
    SELECT mm.id, mm.owner_id, mm.status, mm.draining, mm.suspended_at, mm.reputation_score, mm.vram_gb, mm.cuda_code,
           mm.region, mm.price, mm.gpu_name, mm.max_concurrent_jobs
    INTO m FROM miners_miner mm WHERE mm.id = p_miner FOR UPDATE;
    IF NOT FOUND OR m.status <> 'online' OR m.draining OR m.suspended_at IS NOT NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM jobs_job q WHERE q.parent_id IS NOT NULL AND q.status = 'queued') THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('jobs_claim:owner:' || m.owner_id, 0));
    END IF;
    IF EXISTS (SELECT 1 FROM miners_servedmodel s WHERE s.miner_id = p_miner) THEN
        RETURN QUERY
        WITH candidates AS (
            SELECT c.id, c.rank_at, c.parent_id FROM miners_servedmodel s
            CROSS JOIN LATERAL (
                SELECT j.id, j.rank_at, j.parent_id FROM jobs_job j
                WHERE j.status = 'queued' AND j.model = s.name AND j.expires_at > p_now
                  AND (p_job_id IS NULL OR j.id = p_job_id)
                  AND {MINER_MEETS_JOB.strip()}
                  AND {PREFERS_REPUTATION.strip()}
                ORDER BY j.rank_at
                LIMIT p_limit
                FOR UPDATE OF j SKIP LOCKED
            ) c
            WHERE s.miner_id = p_miner AND (p_models IS NULL OR s.name = ANY(p_models))
        ), picked AS (
            {_ONE_ATTEMPT_PER_JOB.strip()}
            LIMIT {_FREE_SLOTS}
        )
        {_LEASE_PICKED.strip()}
    ELSE
        -- A miner that declares no models serves every model outside the catalog.
        RETURN QUERY
        WITH candidates AS (
            SELECT j.id, j.rank_at, j.parent_id FROM jobs_job j
            WHERE j.status = 'queued' AND j.expires_at > p_now
              AND (p_job_id IS NULL OR j.id = p_job_id)
              AND (p_models IS NULL OR j.model = ANY(p_models))
              AND j.model <> '{AGENT_TASK_MODEL}'
              AND NOT EXISTS (SELECT 1 FROM {CatalogModel._meta.db_table} cm WHERE cm.name = j.model)
              AND {MINER_MEETS_JOB.strip()}
              AND {PREFERS_REPUTATION.strip()}
            ORDER BY j.rank_at
            LIMIT {_FREE_SLOTS}
            FOR UPDATE OF j SKIP LOCKED
        ), picked AS (
            {_ONE_ATTEMPT_PER_JOB.strip()}
        )
        {_LEASE_PICKED.strip()}
    END IF;
END $$;
"""


def create_claim_function(schema_editor) -> None:
    """Install (or replace) ``jobs_claim`` as this module states it; PostgreSQL only."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CLAIM_FUNCTION, params=None)


def head_start_seconds(miner: Miner) -> float:
    """How long a job waits before ``miner`` may claim it (``PREFERS_REPUTATION``): a wait for work
    woken by a job's announcement looks again this long after, or it would leave the job to the next
    announcement."""
    reputation = miner.reputation_score
    if reputation is None or reputation >= 1:
        return 0.0
    return max(0.0, settings.MATCHING_REPUTATION_HEADSTART_SECONDS * (1 - reputation))


def reputation_headstart_filter(jobs: QuerySet[Job], *, miner: Miner, now, headstart: float) -> QuerySet[Job]:
    """``PREFERS_REPUTATION`` as an ORM filter (the portable claim)."""
    if miner.reputation_score is None or headstart <= 0 or miner.reputation_score >= 1:
        return jobs
    return jobs.filter(created_at__lte=now - timedelta(seconds=headstart * (1 - miner.reputation_score)))


def jobs_for_miner(jobs: QuerySet[Job], *, miner: Miner) -> QuerySet[Job]:
    """Those of ``jobs`` whose model ``miner`` serves and whose constraints it meets."""
    served = ServedModel.objects.filter(miner=miner.pk)
    jobs = jobs.filter(
        Q(model__in=served.values("name"))
        | (~Exists(served) & ~Q(model=AGENT_TASK_MODEL) & ~Exists(CatalogModel.objects.filter(name=OuterRef("model"))))
    )
    jobs = jobs.filter(Q(req_min_vram_gb__isnull=True) | Q(req_min_vram_gb__lte=miner.vram_gb))
    jobs = jobs.filter(Q(req_cuda_code__isnull=True) | Q(req_cuda_code__lte=miner.cuda_code or 0))
    jobs = jobs.filter(Q(req_region="") | Q(req_region__iexact=miner.region))
    jobs = jobs.filter(Q(req_miner__isnull=True) | Q(req_miner=miner.pk))
    reputation = miner.reputation_score if miner.reputation_score is not None else -1
    jobs = jobs.filter(Q(req_min_reputation__isnull=True) | Q(req_min_reputation__lte=reputation))
    same_owner = Job.objects.filter(parent=OuterRef("parent"), miner__owner=miner.owner_id)
    jobs = jobs.filter(Q(parent__isnull=True) | ~Exists(same_owner))
    if miner.price is not None:
        jobs = jobs.filter(Q(req_max_price__isnull=True) | Q(req_max_price__gte=miner.price))
    if miner.gpu_name:
        jobs = jobs.alias(miner_gpu=Value(miner.gpu_name)).filter(Q(req_gpu="") | Q(miner_gpu__icontains=F("req_gpu")))
    else:
        jobs = jobs.filter(req_gpu="")
    return jobs


def miners_for_job(miners: QuerySet[Miner], *, job: Job) -> QuerySet[Miner]:
    """Those of ``miners`` that take work, serve ``job``'s model and meet its constraints."""
    serves_model = Q(served_models__name=job.model)
    if job.model != AGENT_TASK_MODEL:
        serves_model |= ~Exists(ServedModel.objects.filter(miner=OuterRef("pk"))) & ~Exists(
            CatalogModel.objects.filter(name=job.model)
        )
    miners = miners.filter(serves_model, status=MinerStatus.ONLINE, draining=False, suspended_at__isnull=True)
    if job.req_miner_id is not None:
        miners = miners.filter(pk=job.req_miner_id)
    if job.req_min_reputation is not None:
        miners = miners.filter(reputation_score__gte=job.req_min_reputation)
    if job.parent_id is not None:
        miners = miners.exclude(owner__miners__jobs__parent=job.parent_id)
    if job.req_min_vram_gb is not None:
        miners = miners.filter(vram_gb__gte=job.req_min_vram_gb)
    if job.req_cuda_code is not None:
        miners = miners.alias(cuda=Coalesce("cuda_code", 0)).filter(cuda__gte=job.req_cuda_code)
    if job.req_region:
        miners = miners.filter(region__iexact=job.req_region)
    if job.req_max_price is not None:
        miners = miners.filter(Q(price__isnull=True) | Q(price__lte=job.req_max_price))
    if job.req_gpu:
        miners = miners.filter(gpu_name__icontains=job.req_gpu)
    return miners
