//! The web console in a real browser: headless Chromium, driven through chromedriver
//! (WebDriver), against the order example running with its admin endpoint and a payment outage
//! that leaves order 3 `Failed`. The operator filters to it, opens it, sees the diagram with the
//! step it failed at, retries it once the outage is over, and sees it complete. Screenshots of
//! the pages go to `target/console-*.png` (docs/operations.md shows them).
//!
//! Runs when `SAGA_TEST_CHROMEDRIVER` names a chromedriver (`.ci/run` installs Debian's
//! `chromium` and `chromium-driver` and sets it); says it was skipped otherwise.
#![cfg(feature = "admin")]

mod worker;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

const TOKEN: &str = "browser-test-token-91c2";
/// How long order 3's card processor is down; the pivot's 30 s timeout fails it meanwhile.
const OUTAGE: Duration = Duration::from_secs(31);
const WAIT: Duration = Duration::from_secs(60);

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the order example with its endpoint on a free port and returns it with the
/// endpoint's URL and the directory holding its binary, once the example has printed its summary (order 3 has failed by then).
fn start_example(store: &std::path::Path) -> (Running, String, Instant, tempfile::TempDir) {
    let (dir, binary) = worker::example("order_saga", &worker::same_features_as_this_test());
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args(["--orders", "8", "--admin", "127.0.0.1:0", "--payment-outage", &OUTAGE.as_secs().to_string()])
        .arg("--store")
        .arg(store)
        .env("SAGAFLOW_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    let child = Running(child);
    let mut url = None;
    for line in stdout.lines() {
        let line = line.expect("the example's output");
        println!("example: {line}");
        if let Some(rest) = line.strip_prefix("admin endpoint: ") {
            url = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.starts_with("serving the admin endpoint") {
            return (child, url.expect("the example printed its endpoint"), started, dir);
        }
    }
    panic!("the example ended before serving its endpoint");
}

fn start_chromedriver(path: &str) -> (Running, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("chromedriver at {path} does not start: {e}"));
    (Running(child), format!("http://127.0.0.1:{port}"))
}

async fn connect(webdriver: &str, profile: &std::path::Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1400,1100",
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("--user-data-dir={}", profile.display())]);
    let mut chrome = serde_json::json!({ "args": args.collect::<Vec<_>>() });
    if let Ok(binary) = std::env::var("SAGA_TEST_CHROMIUM") {
        chrome["binary"] = binary.into();
    }
    capabilities.insert("goog:chromeOptions".into(), chrome);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(webdriver).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                println!("chromedriver not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no browser session: {e}"),
        }
    }
}

fn screenshots_dir() -> std::path::PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{root}/target")))
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    let path = screenshots_dir().join(name);
    std::fs::write(&path, png).expect("the screenshot is written");
    println!("screenshot: {}", path.display());
}

async fn css(browser: &Client, selector: &str) -> fantoccini::elements::Element {
    browser.wait().at_most(WAIT).for_element(Locator::Css(selector)).await.unwrap_or_else(|e| {
        panic!("no {selector} on the page: {e}");
    })
}

#[tokio::test]
async fn an_operator_finds_the_failed_order_in_the_console_retries_it_and_sees_it_complete() {
    let Ok(chromedriver) = std::env::var("SAGA_TEST_CHROMEDRIVER") else {
        eprintln!(
            "skipped: the browser test (set SAGA_TEST_CHROMEDRIVER=/usr/bin/chromedriver, with Debian's chromium)"
        );
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let (_example, base, started, _binary) = start_example(&scratch.path().join("store"));
    let (_driver, webdriver) = start_chromedriver(&chromedriver);
    let browser = connect(&webdriver, &scratch.path().join("profile")).await;

    // The list, with the counts; the token goes in once, for the actions later.
    browser.goto(&format!("{base}/console")).await.unwrap();
    let counts = css(&browser, "section.counts table").await.text().await.unwrap();
    assert!(counts.contains("order-fulfilment"), "{counts}");
    css(&browser, "#token").await.send_keys(TOKEN).await.unwrap();
    css(&browser, "#operator").await.send_keys("browser-test").await.unwrap();

    // Filter to the failed orders: only order 3.
    css(&browser, "form.filters select[name=status]").await.select_by_value("failed").await.unwrap();
    css(&browser, "form.filters button[type=submit]").await.click().await.unwrap();
    css(&browser, "select[name=status] option[value=failed][selected]").await;
    let rows = browser.find_all(Locator::Css("table.instances tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1, "one failed order");
    let id = rows[0].attr("data-instance").await.unwrap().expect("the row names its instance");
    assert!(rows[0].text().await.unwrap().contains("failed"));
    screenshot(&browser, "console-list.png").await;

    // Its page: the diagram shows where it went, and where it failed (the payment, the pivot).
    css(&browser, &format!("a[href$='/console/instances/{id}']")).await.click().await.unwrap();
    css(&browser, "svg.diagram").await;
    let pivot = css(&browser, "svg.diagram g.node.failed[data-node=s1] text").await.text().await.unwrap();
    assert_eq!(pivot, "charge_payment (pivot)", "the node's label is drawn");
    for passed in ["start", "s0"] {
        css(&browser, &format!("svg.diagram g.node.visited[data-node={passed}]")).await;
    }
    css(&browser, "svg.diagram g.edge.taken[data-from=s0][data-to=s1]").await;
    let status = css(&browser, "h1 .status").await.text().await.unwrap();
    assert_eq!(status, "failed");
    let page = css(&browser, "main").await.text().await.unwrap();
    assert!(page.contains("charge_payment"), "it names the step: {page}");
    screenshot(&browser, "console-instance.png").await;

    // The processor is back: retry, confirm with a reason, and watch it complete.
    if let Some(left) = OUTAGE.checked_sub(started.elapsed()) {
        tokio::time::sleep(left + Duration::from_secs(1)).await;
    }
    css(&browser, "button[data-post$='/retry']").await.click().await.unwrap();
    let deadline = Instant::now() + WAIT;
    while browser.get_alert_text().await.is_err() {
        assert!(Instant::now() < deadline, "no confirmation was asked for");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked = browser.get_alert_text().await.unwrap();
    assert!(asked.contains("retry") && asked.contains(&id), "the confirmation names the action: {asked}");
    browser.send_alert_text("card processor back").await.unwrap();
    browser.accept_alert().await.unwrap();
    let flash = css(&browser, "#flash.ok").await.text().await.unwrap();
    assert!(flash.contains("done"), "{flash}");

    let deadline = Instant::now() + WAIT;
    loop {
        let status = css(&browser, "h1 .status").await.text().await.unwrap();
        if status == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "the retried order did not complete: still {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        browser.refresh().await.unwrap();
    }
    css(&browser, "svg.diagram g.node.visited[data-node=completed]").await;
    let history = css(&browser, "table.history").await.text().await.unwrap();
    assert!(history.contains("operator browser-test: retry (card processor back)"), "{history}");
    screenshot(&browser, "console-instance-completed.png").await;
    browser.close().await.unwrap();
}
