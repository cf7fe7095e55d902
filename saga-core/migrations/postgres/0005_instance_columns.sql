-- Version 5: the saga name and the time of the last change as columns of saga_instances, so
-- that operators' listings filter and count in SQL (InstanceQuery). Rows written before this
-- version have NULLs here until PostgresStore::connect fills them in from their records.
ALTER TABLE saga_instances ADD COLUMN saga TEXT, ADD COLUMN updated_at BIGINT;
CREATE INDEX saga_instances_by_saga ON saga_instances (saga, status, id);
