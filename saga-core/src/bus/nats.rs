//! NATS JetStream transport (being written).
