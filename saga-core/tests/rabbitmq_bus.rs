//! The RabbitMQ transport against a running broker (set `SAGA_TEST_AMQP_URL`).
#![cfg(feature = "rabbitmq")]

mod conformance {
    saga_core::conformance_tests!(saga_core::bus::RabbitMqTarget::from_env());
}
