-- Version 3: the PostgreSQL bus. Queue rows are claimed by a consumer (which bus, until when
-- by the database's clock) instead of being held in one process's memory, a nacked row is
-- invisible until its delay passed, and each claim counts as a delivery. Bindings and live
-- consumers are rows too, so that every process routes and refuses the same way.
ALTER TABLE saga_queue
    ADD COLUMN visible_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN claimed_by UUID,
    ADD COLUMN claimed_until TIMESTAMPTZ,
    ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
CREATE INDEX saga_queue_claims ON saga_queue (claimed_by) WHERE claimed_by IS NOT NULL;

CREATE TABLE saga_bus_bindings (
    name TEXT NOT NULL,
    subscription TEXT NOT NULL,
    PRIMARY KEY (name, subscription)
);
CREATE INDEX saga_bus_bindings_subscription ON saga_bus_bindings (subscription);

CREATE TABLE saga_bus_consumers (
    subscription TEXT NOT NULL,
    consumer UUID NOT NULL,
    exclusive BOOLEAN NOT NULL,
    alive_until TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (subscription, consumer)
);
