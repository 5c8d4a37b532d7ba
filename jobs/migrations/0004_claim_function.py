from django.db import migrations

# A claim as one call on PostgreSQL: lock the miner's row (its concurrency limit holds against
# parallel polls), then lease the best queued jobs it can run. Each statement of a volatile
# PL/pgSQL function takes a new snapshot, so the running-jobs count sees every claim committed
# before the lock was granted. Outside a transaction the call is its own transaction: a claim is
# one round trip. The queue is walked through its partial index per served model; the plans are
# generic (the status tests are literals), made once per connection.
CREATE = """
CREATE FUNCTION jobs_claim(
    p_miner bigint, p_limit integer, p_job_id uuid, p_models text[], p_now timestamptz, p_lease_until timestamptz
) RETURNS SETOF jobs_job LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    m record;
BEGIN
    SELECT mm.status, mm.draining, mm.vram_gb, coalesce(mm.cuda_code, 0) AS cuda, mm.region, mm.price,
           mm.gpu_name, mm.max_concurrent_jobs
    INTO m FROM miners_miner mm WHERE mm.id = p_miner FOR UPDATE;
    IF NOT FOUND OR m.status <> 'online' OR m.draining THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT c.id FROM miners_servedmodel s
        CROSS JOIN LATERAL (
            SELECT j.id, j.rank_at FROM jobs_job j
            WHERE j.status = 'queued' AND j.model = s.name AND j.expires_at > p_now
              AND (p_job_id IS NULL OR j.id = p_job_id)
              AND (j.req_min_vram_gb IS NULL OR j.req_min_vram_gb <= m.vram_gb)
              AND (j.req_cuda_code IS NULL OR j.req_cuda_code <= m.cuda)
              AND (j.req_region = '' OR lower(j.req_region) = lower(m.region))
              AND (j.req_max_price IS NULL OR m.price IS NULL OR j.req_max_price >= m.price)
              AND (j.req_gpu = '' OR strpos(lower(m.gpu_name), lower(j.req_gpu)) > 0)
            ORDER BY j.rank_at
            LIMIT p_limit
            FOR UPDATE OF j SKIP LOCKED
        ) c
        WHERE s.miner_id = p_miner AND (p_models IS NULL OR s.name = ANY(p_models))
        ORDER BY c.rank_at
        LIMIT LEAST(p_limit, GREATEST(0, m.max_concurrent_jobs - (
            SELECT count(*) FROM jobs_job r WHERE r.miner_id = p_miner AND r.status = 'running'
        )))
    )
    UPDATE jobs_job j SET status = 'running', miner_id = p_miner, attempt = j.attempt + 1,
        lease_token = gen_random_uuid()::text, lease_expires_at = p_lease_until, started_at = p_now,
        progress = 0, updated_at = p_now
    FROM picked WHERE j.id = picked.id
    RETURNING j.*;
END $$;
"""

DROP = "DROP FUNCTION jobs_claim(bigint, integer, uuid, text[], timestamptz, timestamptz);"


def _run(schema_editor, sql: str) -> None:
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(sql)


def create(apps, schema_editor):
    _run(schema_editor, CREATE)


def drop(apps, schema_editor):
    _run(schema_editor, DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0003_failed_attempt"),
        ("miners", "0003_miner_ban"),
    ]

    operations = [migrations.RunPython(create, drop)]
