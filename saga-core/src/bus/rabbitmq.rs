//! RabbitMQ transport (being written).
