//! The web console (feature `admin`) over plain HTTP: the list with its counts and filters,
//! an instance's page with the saga's diagram and the path it took, every user-controlled
//! string rendered as text, and links that work when the endpoint is nested. The browser
//! drives it in tests/console_browser.rs.
#![cfg(feature = "admin")]

mod common;

use common::*;
use reqwest::StatusCode;
use sagaflow::prelude::*;
use sagaflow::saga::instance_id;
use serde::{Deserialize, Serialize};

async fn page(url: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status(), response.headers().clone(), response.text().await.unwrap())
}

#[tokio::test]
async fn the_list_counts_by_saga_and_status_and_filters_to_the_failed_instance() {
    let runtime = failed_trip(&Script::default()).await;
    let (endpoint, base) = serve_admin(&runtime, None).await;
    let (failed, completed) = (instance_id(Trip::NAME, "0"), instance_id(Trip::NAME, "1"));

    let (status, headers, all) = page(&format!("{base}/console")).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert!(headers[reqwest::header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(all.contains(&failed.to_string()) && all.contains(&completed.to_string()), "{all}");
    assert!(all.contains("href=\"/console?saga=trip&amp;status=failed\""), "a count links to its instances: {all}");

    let (_, _, only_failed) = page(&format!("{base}/console?saga=trip&status=failed")).await;
    assert!(only_failed.contains(&format!("href=\"/console/instances/{failed}\"")), "{only_failed}");
    assert!(!only_failed.contains(&completed.to_string()), "{only_failed}");
    assert!(only_failed.contains("<option value=\"failed\" selected>"), "the filter shows what it filters by");

    let (_, _, by_key) = page(&format!("{base}/console?key=1")).await;
    assert!(by_key.contains(&completed.to_string()) && !by_key.contains(&failed.to_string()), "{by_key}");

    let (status, _, bad) = page(&format!("{base}/console?status=stuck")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("unknown saga status"), "a bad filter says what is wrong: {bad}");
    endpoint.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_instance_page_draws_its_path_through_the_saga_and_offers_the_actions_that_apply() {
    let runtime = failed_trip(&Script::default()).await;
    let (endpoint, base) = serve_admin(&runtime, None).await;
    let failed = instance_id(Trip::NAME, "0");

    let (status, _, html) = page(&format!("{base}/console/instances/{failed}")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    // Flight booked, hotel refused, the flight's cancellation refused: it failed undoing the flight.
    for (node, class) in [("start", "visited"), ("s0", "visited"), ("s1", "visited"), ("c0", "failed"), ("s2", "")] {
        let class = if class.is_empty() { "node".to_owned() } else { format!("node {class}") };
        assert!(html.contains(&format!("<g class=\"{class}\" data-node=\"{node}\">")), "{node} is {class}: {html}");
    }
    for (from, to) in [("start", "s0"), ("s0", "s1"), ("s1", "c0")] {
        let edge = format!("data-from=\"{from}\" data-to=\"{to}\"");
        let at = html.find(&edge).unwrap_or_else(|| panic!("no edge {from} -> {to}: {html}"));
        assert!(html[..at].ends_with("taken\" "), "{from} -> {to} is taken: {}", &html[at - 40..at + 40]);
    }
    assert!(html.contains("class start,s0,s1 visited\n    class c0 failed\n"), "the Mermaid text too: {html}");
    // It failed compensating: retry, skip, resume or cancel; abort does not apply.
    for action in ["retry", "skip", "resume", "cancel"] {
        assert!(html.contains(&format!("data-post=\"/api/instances/{failed}/{action}\"")), "{action}: {html}");
    }
    assert!(!html.contains(&format!("/api/instances/{failed}/abort")), "{html}");
    assert!(html.contains("compensation of book_flight failed"), "the history reads as text: {html}");

    let (status, _, missing) = page(&format!("{base}/console/instances/{}", uuid::Uuid::nil())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    endpoint.shutdown().await.unwrap();
}

#[derive(Serialize, Deserialize, Message)]
#[message(name = "note.posted")]
struct Posted {
    #[correlation]
    title: String,
    body: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Note {
    title: String,
    body: String,
}

#[saga(name = "note")]
impl Note {
    #[start]
    fn posted(p: &Posted) -> Self {
        Note { title: p.title.clone(), body: p.body.clone() }
    }

    #[step]
    async fn publish(self, _ctx: StepContext) -> Result<Self, StepError> {
        Ok(self)
    }
}

#[tokio::test]
async fn strings_from_users_render_as_text_never_as_markup() {
    let runtime =
        SagaRuntime::builder().store(sagaflow::store::MemoryStore::new()).saga::<Note>().build().await.unwrap();
    let title = "<img src=x onerror=alert(1)>";
    runtime.publish(&Posted { title: title.into(), body: "<script>alert('pwned')</script>".into() }).await.unwrap();
    let id = instance_id(Note::NAME, title);
    runtime.wait_until_terminal(&[id], std::time::Duration::from_secs(30)).await.unwrap();
    let (endpoint, base) = serve_admin(&runtime, None).await;

    for url in [format!("{base}/console"), format!("{base}/console/instances/{id}")] {
        let (status, headers, html) = page(&url).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(!html.contains("<img src=x") && !html.contains("<script>alert"), "{url} renders markup: {html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"), "{url} shows the key as text: {html}");
        let policy = headers[reqwest::header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");
    }
    let (_, _, html) = page(&format!("{base}/console/instances/{id}")).await;
    assert!(html.contains("&lt;script&gt;alert('pwned')&lt;/script&gt;"), "the state shows as text: {html}");
    assert_eq!(html.matches("<script").count(), 1, "only the console's own script: {html}");
    endpoint.shutdown().await.unwrap();
}

#[tokio::test]
async fn nested_under_a_path_the_console_links_stay_under_it() {
    let runtime = failed_trip(&Script::default()).await;
    let app =
        axum::Router::new().nest("/ops/sagas", runtime.admin().router(sagaflow::admin::http::AdminOptions::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let failed = instance_id(Trip::NAME, "0");

    let (status, _, html) = page(&format!("{base}/ops/sagas/console")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(&format!("href=\"/ops/sagas/console/instances/{failed}\"")), "{html}");
    assert!(html.contains("src=\"/ops/sagas/console/assets/console.js\""), "{html}");
    assert!(html.contains("data-root=\"/ops/sagas\""), "the script posts under the prefix too: {html}");
    let (status, headers, css) = page(&format!("{base}/ops/sagas/console/assets/console.css")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[reqwest::header::CONTENT_TYPE].to_str().unwrap().starts_with("text/css"));
    assert!(css.contains("svg.diagram"), "{css}");
    server.abort();
}

#[tokio::test]
async fn an_aborted_instance_is_traced_into_compensation_by_no_edge_of_the_chart() {
    let script = Script::default();
    script.answer(BookHotel::NAME, 0, Answer::Ignore);
    let runtime = trip_runtime(&script).store(sagaflow::store::MemoryStore::new()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 0 }).await.unwrap();
    let id = instance_id(Trip::NAME, "0");
    until("the trip waits for its hotel", async || status(&runtime, 0).await == Some(SagaStatus::Running { step: 1 }))
        .await;
    runtime.admin().act(id, sagaflow::admin::Operation::Abort, "ann", "customer called").await.unwrap();
    runtime.wait_until_terminal(&[id], std::time::Duration::from_secs(30)).await.unwrap();

    let detail = runtime.admin().inspect(id, 100).await.unwrap().unwrap();
    let path = detail.path.unwrap();
    assert_eq!(path.visited, ["start", "s0", "s1", "c1", "c0", "compensated"]);
    let diagram = runtime.admin().diagram(Trip::NAME).unwrap();
    let taken: Vec<(&str, &str)> =
        path.taken.iter().map(|&i| (diagram.edges[i].from.as_str(), diagram.edges[i].to.as_str())).collect();
    // s1 -> c1 is the chart's timeout edge: the abort did not take it.
    assert_eq!(taken, [("start", "s0"), ("s0", "s1"), ("c1", "c0"), ("c0", "compensated")]);
}

#[tokio::test]
async fn a_dead_letter_is_listed_and_shown_with_its_payload_and_headers() {
    let script = Script::default();
    script.answer(BookHotel::NAME, 0, Answer::Fail);
    let runtime = trip_runtime(&script).store(sagaflow::store::MemoryStore::new()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 0 }).await.unwrap();
    until("the hotel booking is dead-lettered", async || {
        !runtime.admin().dead_letters(None, 10).await.unwrap().is_empty()
    })
    .await;
    let dead = runtime.admin().dead_letters(None, 10).await.unwrap().remove(0);
    let (endpoint, base) = serve_admin(&runtime, None).await;
    let subscription = dead.message.subscription.clone().unwrap();
    let link = format!("/console/dead-letters/{subscription}/{}", dead.message.message_id);

    let (status, _, list) = page(&format!("{base}/console/dead-letters")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(list.contains(&format!("href=\"{link}\"")), "each dead letter links to its page: {list}");
    let (status, _, one) = page(&format!("{base}{link}")).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert!(one.contains("&quot;trip&quot;: 0") && one.contains("hotel.book is down"), "{one}");
    assert!(
        one.contains(&format!("data-post=\"/api/dead-letters/{subscription}/{}/replay\"", dead.message.message_id))
    );
    let (status, _, _) = page(&format!("{base}/console/dead-letters/{subscription}/{}", uuid::Uuid::nil())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    endpoint.shutdown().await.unwrap();
}
