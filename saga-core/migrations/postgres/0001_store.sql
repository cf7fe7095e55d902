-- The PostgreSQL store's schema, version 1: one table per record kind of the Store contract.
-- Records the engine only reads back whole are postcard-encoded, as in the sled store.
CREATE TABLE saga_instances (
    id UUID PRIMARY KEY,
    version BIGINT NOT NULL,
    status SMALLINT NOT NULL,
    record BYTEA NOT NULL
);
CREATE INDEX saga_instances_by_status ON saga_instances (status, id);

CREATE TABLE saga_history (
    instance_id UUID NOT NULL,
    version BIGINT NOT NULL,
    entry BYTEA NOT NULL,
    PRIMARY KEY (instance_id, version)
);

CREATE TABLE saga_inbox (
    consumer UUID NOT NULL,
    message_id UUID NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE saga_entities (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    version BIGINT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE saga_outbox (
    seq BIGSERIAL PRIMARY KEY,
    envelope BYTEA NOT NULL
);

CREATE TABLE saga_parked_outbox (
    seq BIGINT PRIMARY KEY,
    reason TEXT NOT NULL,
    parked_at BIGINT NOT NULL,
    envelope BYTEA NOT NULL
);

CREATE TABLE saga_timers (
    due BIGINT NOT NULL,
    instance_id UUID NOT NULL,
    timer_id UUID NOT NULL,
    record BYTEA NOT NULL,
    PRIMARY KEY (due, instance_id, timer_id)
);

CREATE SEQUENCE saga_queue_seq;

CREATE TABLE saga_queue (
    subscription TEXT NOT NULL,
    seq BIGINT NOT NULL,
    envelope BYTEA NOT NULL,
    PRIMARY KEY (subscription, seq)
);

CREATE TABLE saga_queue_dead (
    seq BIGINT PRIMARY KEY,
    subscription TEXT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    envelope BYTEA NOT NULL
);
