-- Version 6, retention: finished instances (completed, compensated, cancelled) by saga and
-- the time they finished, written once by the commit that finishes one (an index on
-- saga_instances.updated_at would be rewritten by every transition); and what retention
-- leaves of a deleted instance, so that a late duplicate of its start message is recognised
-- until `until` (milliseconds since the epoch).
CREATE TABLE saga_finished (
    saga TEXT NOT NULL,
    finished_at BIGINT NOT NULL,
    id UUID NOT NULL,
    PRIMARY KEY (saga, finished_at, id)
);

CREATE TABLE saga_tombstones (
    id UUID PRIMARY KEY,
    saga TEXT NOT NULL,
    status TEXT NOT NULL,
    pruned_at BIGINT NOT NULL,
    until BIGINT NOT NULL
);
CREATE INDEX saga_tombstones_by_until ON saga_tombstones (until);

-- When each inbox entry was written (milliseconds since the epoch, wall clock), so that
-- retention drops participants' entries past the bus's redelivery horizon. NULL: written
-- before this version, and as old as can be.
ALTER TABLE saga_inbox ADD COLUMN at BIGINT;
