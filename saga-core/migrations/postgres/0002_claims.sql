-- Version 2: several processes on one database. Timers and outbox rows carry a claim
-- (who holds them, until when by the database's clock), so each due timer fires in one
-- process at a time, a local step runs under a lease, and a dead process's outbox rows are
-- found by the others' sweepers.
ALTER TABLE saga_timers
    ADD COLUMN run_local BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN claimed_by UUID,
    ADD COLUMN claimed_until TIMESTAMPTZ;
CREATE INDEX saga_timers_local_runs ON saga_timers (claimed_until) WHERE run_local;

ALTER TABLE saga_outbox
    ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN claimed_until TIMESTAMPTZ;
