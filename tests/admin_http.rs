//! The admin endpoint (feature `admin`): the admin API as JSON over HTTP, read-only without a
//! token, 401 for a mutating call without the right one, clear 4xx errors for bad input, and
//! the token never in a log line.
#![cfg(feature = "admin")]

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use sagaflow::prelude::*;
use sagaflow::saga::instance_id;
use serde_json::{Value, json};

const TOKEN: &str = "token-7f3a9c-only-the-operator-knows";
const WAIT: Duration = Duration::from_secs(60);

async fn get(url: &str) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn post(url: &str, token: Option<&str>, body: Value) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, response.json().await.unwrap(), headers)
}

#[tokio::test]
async fn a_failed_instance_is_found_inspected_and_retried_over_http() {
    let script = Script::default();
    let runtime = failed_trip(&script).await;
    let (endpoint, base) = serve_admin(&runtime, Some(TOKEN)).await;
    let failed = instance_id(Trip::NAME, "0");

    let (status, page) = get(&format!("{base}/api/instances?saga=trip&status=failed")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let instances = page["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{page}");
    assert_eq!(instances[0]["id"], failed.to_string());
    assert_eq!(instances[0]["status"], "failed");
    assert_eq!(page["next"], Value::Null);

    let (_, by_key) = get(&format!("{base}/api/instances?key=1")).await;
    assert_eq!(by_key["instances"][0]["status"], "completed", "{by_key}");
    let (_, counts) = get(&format!("{base}/api/counts?saga=trip")).await;
    let count =
        |status: &str| counts.as_array().unwrap().iter().find(|c| c["status"] == status).map(|c| c["count"].clone());
    assert_eq!((count("failed"), count("completed")), (Some(json!(1)), Some(json!(1))), "{counts}");

    let (status, detail) = get(&format!("{base}/api/instances/{failed}")).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["state"]["trip"], 0, "{detail}");
    assert!(detail["reason"].is_string(), "why it failed: {detail}");
    assert!(!detail["history"].as_array().unwrap().is_empty(), "{detail}");
    assert!(detail["diagram"].as_str().unwrap().contains("flowchart"), "{detail}");
    let (_, history) = get(&format!("{base}/api/instances/{failed}/history?limit=2")).await;
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");

    // The flight service is fixed; the operator retries the compensation that failed.
    script.answer(CancelFlight::NAME, 0, Answer::Succeed);
    let (status, after, _) =
        post(&format!("{base}/api/instances/{failed}/retry"), Some(TOKEN), json!({"by": "ann", "reason": "fixed"}))
            .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    runtime.wait_until_terminal(&[failed], WAIT).await.unwrap();
    let (_, detail) = get(&format!("{base}/api/instances/{failed}?history=1000")).await;
    assert_eq!(detail["status"], "compensated", "{detail}");
    let operator = detail["history"].as_array().unwrap().iter().find(|e| e.to_string().contains("\"ann\""));
    assert!(operator.is_some_and(|e| e.to_string().contains("fixed")), "the retry is in the history: {detail}");

    // Nothing is left to retry: the refusal says why, as a conflict.
    let (status, refusal, _) = post(&format!("{base}/api/instances/{failed}/retry"), Some(TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refusal}");
    assert!(refusal["error"].as_str().unwrap().contains("compensated"), "{refusal}");

    let (status, ready) = get(&format!("{base}/ready")).await;
    assert_eq!(
        (status, ready["ready"].clone(), ready["store"].clone()),
        (StatusCode::OK, json!(true), json!("healthy"))
    );
    assert_eq!(get(&format!("{base}/health")).await, (StatusCode::OK, json!({"status": "ok"})));
    endpoint.shutdown().await.unwrap();
}

#[tokio::test]
async fn mutating_calls_without_the_token_are_refused_with_401_and_change_nothing() {
    let script = Script::default();
    let runtime = failed_trip(&script).await;
    let (endpoint, base) = serve_admin(&runtime, Some(TOKEN)).await;
    let failed = instance_id(Trip::NAME, "0");
    let version = runtime.instance(failed).await.unwrap().unwrap().version();

    for token in [None, Some("wrong"), Some("")] {
        for url in [
            format!("{base}/api/instances/{failed}/cancel"),
            format!("{base}/api/actions/cancel?status=failed"),
            format!("{base}/api/parked/1/discard"),
        ] {
            let (status, body, headers) = post(&url, token, json!({"reason": "x"})).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{url} with {token:?}: {body}");
            assert_eq!(headers[reqwest::header::WWW_AUTHENTICATE], "Bearer");
            assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
        }
    }
    assert_eq!(runtime.instance(failed).await.unwrap().unwrap().version(), version, "nothing changed");
    endpoint.shutdown().await.unwrap();

    // Without a configured token the endpoint reads but never writes.
    let (endpoint, base) = serve_admin(&runtime, None).await;
    let (status, body, _) = post(&format!("{base}/api/instances/{failed}/cancel"), Some(TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("read-only"), "{body}");
    assert_eq!(get(&format!("{base}/api/instances?status=failed")).await.0, StatusCode::OK);
    assert_eq!(runtime.instance(failed).await.unwrap().unwrap().version(), version, "nothing changed");
    endpoint.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_a_4xx_that_says_what_is_wrong() {
    let runtime = failed_trip(&Script::default()).await;
    let (endpoint, base) = serve_admin(&runtime, Some(TOKEN)).await;
    let failed = instance_id(Trip::NAME, "0");
    let cases = [
        (format!("{base}/api/instances?status=stuck"), StatusCode::BAD_REQUEST, "stuck"),
        (format!("{base}/api/instances?older_than=soon"), StatusCode::BAD_REQUEST, "duration"),
        (format!("{base}/api/instances?after=nonsense"), StatusCode::BAD_REQUEST, "cursor"),
        (format!("{base}/api/instances?limit=-1"), StatusCode::BAD_REQUEST, "query string"),
        (format!("{base}/api/instances/not-a-uuid"), StatusCode::BAD_REQUEST, "UUID"),
        (format!("{base}/api/instances/{}", uuid::Uuid::nil()), StatusCode::NOT_FOUND, "not found"),
    ];
    for (url, expected, says) in cases {
        let (status, body) = get(&url).await;
        assert_eq!(status, expected, "{url}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{url}: {body}");
    }
    let posts = [
        (format!("{base}/api/instances/{failed}/explode"), json!({}), StatusCode::BAD_REQUEST, "unknown action"),
        (format!("{base}/api/instances/{failed}/retry"), json!({"why": 1}), StatusCode::BAD_REQUEST, "JSON"),
        (format!("{base}/api/instances/{}/retry", uuid::Uuid::nil()), json!({}), StatusCode::NOT_FOUND, "not found"),
        (format!("{base}/api/actions/abort"), json!({}), StatusCode::BAD_REQUEST, "needs a filter"),
        (format!("{base}/api/parked/9/replay"), json!({}), StatusCode::NOT_FOUND, "not found"),
    ];
    for (url, body, expected, says) in posts {
        let (status, answer, _) = post(&url, Some(TOKEN), body).await;
        assert_eq!(status, expected, "{url}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{url}: {answer}");
    }
    endpoint.shutdown().await.unwrap();
}

#[tokio::test]
async fn bulk_actions_by_filter_report_each_instance() {
    let script = Script::default();
    for trip in 0..3 {
        script.answer(BookHotel::NAME, trip, Answer::Refuse).answer(CancelFlight::NAME, trip, Answer::Refuse);
    }
    let runtime = trip_runtime(&script).store(sagaflow::store::MemoryStore::new()).build().await.unwrap();
    let ids: Vec<_> = (0..4).map(|t| instance_id(Trip::NAME, &t.to_string())).collect();
    for trip in 0..4 {
        runtime.publish(&BookTrip { trip }).await.unwrap();
    }
    runtime.wait_until_terminal(&ids, WAIT).await.unwrap();
    let (endpoint, base) = serve_admin(&runtime, Some(TOKEN)).await;
    let (status, results, _) = post(
        &format!("{base}/api/actions/cancel?saga=trip&status=failed"),
        Some(TOKEN),
        json!({"reason": "refunded by hand"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{results}");
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(results.iter().all(|r| r["applied"] == true), "{results:?}");
    let (_, cancelled) = get(&format!("{base}/api/instances?status=cancelled")).await;
    assert_eq!(cancelled["instances"].as_array().unwrap().len(), 3, "{cancelled}");
    endpoint.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dead_letter_is_listed_and_replayed_over_http() {
    let script = Script::default();
    script.answer(BookHotel::NAME, 0, Answer::Fail);
    let runtime = trip_runtime(&script).store(sagaflow::store::MemoryStore::new()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 0 }).await.unwrap();
    let (endpoint, base) = serve_admin(&runtime, Some(TOKEN)).await;
    let deadline = std::time::Instant::now() + WAIT;
    let dead = loop {
        let (status, list) = get(&format!("{base}/api/dead-letters")).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        if let Some(dead) = list.as_array().unwrap().first() {
            break dead.clone();
        }
        assert!(std::time::Instant::now() < deadline, "nothing was dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead["name"], BookHotel::NAME, "{dead}");
    assert_eq!(dead["instance"], instance_id(Trip::NAME, "0").to_string(), "{dead}");
    let one = format!(
        "{base}/api/dead-letters/{}/{}",
        dead["subscription"].as_str().unwrap(),
        dead["message_id"].as_str().unwrap()
    );
    let (status, full) = get(&one).await;
    assert_eq!(status, StatusCode::OK, "{full}");
    assert_eq!(full["payload"]["trip"], 0, "{full}");
    assert!(full["attempt"].as_u64().is_some_and(|a| a >= 1), "{full}");
    assert!(full["reason"].as_str().unwrap().contains("down"), "{full}");
    let url = format!("{one}/replay");

    let (status, _, _) = post(&url, None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    script.answer(BookHotel::NAME, 0, Answer::Succeed);
    let (status, done, _) = post(&url, Some(TOKEN), json!({ "by": "ann", "reason": "hotel API back" })).await;
    assert_eq!((status, &done["count"]), (StatusCode::OK, &json!(1)), "{done}");
    runtime.wait_until_terminal(&[instance_id(Trip::NAME, "0")], WAIT).await.unwrap();
    assert_eq!(common::status(&runtime, 0).await, Some(SagaStatus::Completed));
    let (status, again, _) = post(&url, Some(TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{again}");
    assert_eq!(get(&one).await.0, StatusCode::NOT_FOUND, "replayed: no longer a dead letter");
    let (status, bad, _) = post(&url.replace("/replay", "/resend"), Some(TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    endpoint.shutdown().await.unwrap();
    runtime.shutdown().await.unwrap();
}

/// `#[tokio::test]` runs the endpoint, the client and the runtime on this one thread, so a
/// thread-local subscriber at TRACE sees every line any of them logs.
#[tokio::test]
async fn the_token_never_appears_in_a_log_line() {
    let captured = Captured::default();
    let _guard = captured.start(tracing::Level::TRACE);

    let runtime = failed_trip(&Script::default()).await;
    let (endpoint, base) = serve_admin(&runtime, Some(TOKEN)).await;
    let failed = instance_id(Trip::NAME, "0");
    post(&format!("{base}/api/instances/{failed}/cancel"), Some(TOKEN), json!({"reason": "log test"})).await;
    post(&format!("{base}/api/instances/{failed}/cancel"), Some(&format!("{TOKEN}x")), json!({})).await;
    get(&format!("{base}/api/instances/{failed}")).await;
    endpoint.shutdown().await.unwrap();

    let logged = captured.text();
    assert!(logged.contains("reason=log test"), "the capture sees the endpoint's work: {logged}");
    assert!(!logged.contains(TOKEN), "the token was logged:\n{logged}");
}
