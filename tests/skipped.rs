//! Says which suites this build leaves out, and how to run them: the broker suites do not even
//! compile without their cargo feature, so they cannot say it themselves.

#[test]
fn say_which_suites_this_build_leaves_out() {
    let say = |suite: &str, how: &str| {
        use std::io::Write as _;
        // Straight to stderr, past the test harness's output capture.
        let _ = writeln!(std::io::stderr(), "skipped: {suite} (build with {how} to run it)");
    };
    if cfg!(not(feature = "rabbitmq")) {
        say(
            "the RabbitMQ suites (rabbitmq_bus, brokers, eshop_interop, crash on RabbitMQ, topology on RabbitMQ)",
            "--features rabbitmq and SAGA_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f",
        );
    }
    if cfg!(not(feature = "nats")) {
        say(
            "the NATS JetStream suites (nats_bus, brokers, topology on NATS)",
            "--features nats and SAGA_TEST_NATS_URL=nats://127.0.0.1:4222",
        );
    }
    if cfg!(not(feature = "postgres")) {
        say(
            "the PostgreSQL suites (the store conformance suite on PostgresStore, the PostgreSQL bus, postgres_store, postgres_shared, scale_out, database_restart, postgres_regressions, postgres_properties)",
            "--features postgres and SAGA_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test",
        );
    }
    if cfg!(not(feature = "admin")) {
        say("the admin endpoint and console suites (admin_http, admin_console, console_browser)", "--features admin");
    }
    if cfg!(not(feature = "failpoints")) {
        say(
            "the crash-point suite (crash, an_abort_at_every_crash_point_*)",
            "--features failpoints (on RabbitMQ also --features rabbitmq and SAGA_TEST_AMQP_URL)",
        );
    }
}
