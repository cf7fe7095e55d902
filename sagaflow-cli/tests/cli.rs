//! The `sagaflow` binary against a runtime's admin endpoint (find a failed trip, look at it,
//! retry it after the fix, see it end) and against a sled store offline (inspection, a dead
//! letter replayed and handled at the next start); `--json` output is parsed, table output
//! checked for what a person looks for.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use sagaflow::prelude::*;
use sagaflow::saga::instance_id;
use serde_json::Value;

const TOKEN: &str = "cli-test-token-5d1e";
const WAIT: Duration = Duration::from_secs(60);

/// Runs the binary with `args` (off the runtime's thread: the endpoint must answer meanwhile).
async fn sagaflow(args: &[&str], token: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"));
        command.args(&args).env_remove("SAGAFLOW_ADMIN_TOKEN").env_remove("SAGAFLOW_URL").env("USER", "cli-test");
        if let Some(token) = token {
            command.env("SAGAFLOW_ADMIN_TOKEN", token);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "sagaflow failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn json(output: &Output) -> Value {
    serde_json::from_str(&stdout(output)).unwrap()
}

#[tokio::test]
async fn a_failed_trip_is_found_shown_and_retried_through_the_endpoint() {
    let script = Script::default();
    let runtime = failed_trip(&script).await;
    let (endpoint, url) = serve_admin(&runtime, Some(TOKEN)).await;
    let failed = instance_id(Trip::NAME, "0").to_string();

    let page = json(
        &sagaflow(&["--url", &url, "--json", "instances", "list", "--saga", "trip", "--status", "failed"], None).await,
    );
    let ids: Vec<&str> = page["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [failed.as_str()], "{page}");

    let table = stdout(&sagaflow(&["--url", &url, "instances", "list", "--status", "failed"], None).await);
    assert!(table.contains(&failed) && table.contains("failed") && table.contains("trip"), "{table}");
    // Paging: the table says how to go on, and the cursor it prints picks up the next page.
    let first = stdout(&sagaflow(&["--url", &url, "instances", "list", "--limit", "1"], None).await);
    let cursor = first.lines().find_map(|l| l.strip_prefix("more: --after ")).unwrap_or_else(|| panic!("{first}"));
    let rest = json(&sagaflow(&["--url", &url, "--json", "instances", "list", "--after", cursor], None).await);
    let rest: Vec<&Value> = rest["instances"].as_array().unwrap().iter().collect();
    assert_eq!(rest.len(), 1, "the other trip: {rest:?}");
    assert!(!first.contains(rest[0]["id"].as_str().unwrap()), "{first}");
    let counts = json(&sagaflow(&["--url", &url, "--json", "instances", "counts"], None).await);
    assert_eq!(counts.as_array().unwrap().len(), 2, "failed and completed: {counts}");
    let shown = stdout(&sagaflow(&["--url", &url, "instances", "show", &failed], None).await);
    assert!(shown.contains("status: failed") && shown.contains("\"trip\": 0") && shown.contains("history:"), "{shown}");

    // Without the token the endpoint refuses, and the command says why and fails.
    let refused = sagaflow(&["--url", &url, "instances", "retry", &failed, "--reason", "fixed"], None).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("401") && stderr.contains("Bearer"), "{stderr}");
    assert!(!stderr.contains(TOKEN));

    script.answer(CancelFlight::NAME, 0, Answer::Succeed);
    let retried =
        stdout(&sagaflow(&["--url", &url, "instances", "retry", &failed, "--reason", "fixed"], Some(TOKEN)).await);
    assert!(retried.contains(&format!("retry: instance {failed}")), "{retried}");
    runtime.wait_until_terminal(&[instance_id(Trip::NAME, "0")], WAIT).await.unwrap();
    let detail =
        json(&sagaflow(&["--url", &url, "--json", "instances", "show", &failed, "--history", "1000"], None).await);
    assert_eq!(detail["status"], "compensated", "{detail}");
    assert!(detail["history"].to_string().contains("cli-test"), "the history names who retried: {detail}");

    // A second retry is refused with the reason; a bulk action reports each instance.
    let again = sagaflow(&["--url", &url, "instances", "retry", &failed], Some(TOKEN)).await;
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"), "{again:?}");
    let bulk =
        json(&sagaflow(&["--url", &url, "--json", "instances", "cancel", "--status", "completed"], Some(TOKEN)).await);
    assert_eq!(bulk[0]["applied"], false, "a completed trip cannot be cancelled: {bulk}");

    let ready = json(&sagaflow(&["--url", &url, "--json", "ready"], None).await);
    assert_eq!(ready["ready"], true, "{ready}");
    endpoint.shutdown().await.unwrap();
    let unreachable = sagaflow(&["--url", &url, "ready"], None).await;
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"), "{unreachable:?}");
}

#[tokio::test]
async fn a_sled_store_no_runtime_holds_is_inspected_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let runtime = failed_trip_on(&Script::default(), sagaflow::store::SledStore::open(&path).unwrap()).await;
    let failed = instance_id(Trip::NAME, "0").to_string();
    let store = path.to_str().unwrap();

    // While the runtime holds it, the command says to use the endpoint.
    let held = sagaflow(&["--store", store, "instances", "counts"], None).await;
    assert!(String::from_utf8_lossy(&held.stderr).contains("--url"), "{held:?}");
    runtime.shutdown().await.unwrap();

    let page = json(&sagaflow(&["--store", store, "--json", "instances", "list", "--status", "failed"], None).await);
    assert_eq!(page["instances"][0]["id"], failed.as_str(), "{page}");
    let by_key =
        json(&sagaflow(&["--store", store, "--json", "instances", "list", "--key", "1", "--saga", "trip"], None).await);
    assert_eq!(by_key["instances"][0]["status"], "completed", "{by_key}");
    let detail = json(&sagaflow(&["--store", store, "--json", "instances", "show", &failed], None).await);
    assert_eq!(detail["state"]["trip"], 0, "{detail}");
    let refused = sagaflow(&["--store", store, "instances", "retry", &failed], None).await;
    assert!(String::from_utf8_lossy(&refused.stderr).contains("saga's code"), "{refused:?}");
    let bad = sagaflow(&["--store", store, "instances", "list", "--status", "stuck"], None).await;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("stuck"), "{bad:?}");
}

#[tokio::test]
async fn a_dead_letter_is_replayed_offline_and_handled_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let script = Script::default();
    script.answer(BookHotel::NAME, 0, Answer::Fail);
    let runtime = trip_runtime(&script).store(sagaflow::store::SledStore::open(&path).unwrap()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 0 }).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let subscription = loop {
        if let Some(dead) = runtime.admin().dead_letters(None, 10).await.unwrap().pop() {
            break dead.message.subscription.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "nothing was dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    runtime.shutdown().await.unwrap();
    let store = path.to_str().unwrap();

    let list = ["--store", store, "--json", "dead-letters", "list", "--subscription", &subscription];
    let dead = json(&sagaflow(&list, None).await);
    assert_eq!(dead[0]["name"], BookHotel::NAME, "{dead}");
    let id = dead[0]["message_id"].as_str().unwrap().to_owned();
    let show = ["--store", store, "--json", "dead-letters", "show", &id, "--subscription", &subscription];
    let full = json(&sagaflow(&show, None).await);
    assert_eq!(
        (&full["payload"]["trip"], &full["correlation_id"]),
        (&Value::from(0), &Value::from(instance_id(Trip::NAME, "0").to_string())),
        "{full}"
    );
    let shown = stdout(&sagaflow(&show[..2].iter().chain(&show[3..]).copied().collect::<Vec<_>>(), None).await);
    assert!(shown.contains("\"trip\": 0") && shown.contains("hotel.book"), "{shown}");
    let replay =
        ["--store", store, "dead-letters", "replay", &id, "--subscription", &subscription, "--reason", "fixed"];
    let replayed = stdout(&sagaflow(&replay, None).await);
    assert!(replayed.contains(&format!("message {id}: 1 dead letter(s) sent back to {subscription}")), "{replayed}");
    assert_eq!(json(&sagaflow(&list, None).await), Value::Array(Vec::new()));
    let again = sagaflow(&replay, None).await;
    assert!(String::from_utf8_lossy(&again.stderr).contains("not found"), "{again:?}");

    script.answer(BookHotel::NAME, 0, Answer::Succeed);
    let runtime = trip_runtime(&script).store(sagaflow::store::SledStore::open(&path).unwrap()).build().await.unwrap();
    runtime.wait_until_terminal(&[instance_id(Trip::NAME, "0")], WAIT).await.unwrap();
    assert_eq!(common::status(&runtime, 0).await, Some(SagaStatus::Completed));
    runtime.shutdown().await.unwrap();
}
