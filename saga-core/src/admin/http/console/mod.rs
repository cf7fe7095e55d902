//! The web console: [`Admin`](crate::admin::Admin) as pages a person clicks through, served by
//! the admin endpoint under `/console`.
//!
//! | page | shows |
//! | --- | --- |
//! | `/console?saga=&status=&older_than=&key=&after=` | counts by saga and status, and a page of instances |
//! | `/console/instances/{id}` | one instance: summary, actions, the saga's diagram with its path, state, history, messages |
//! | `/console/dead-letters?subscription=` | dead letters, with replay and discard |
//! | `/console/dead-letters/{subscription}/{message_id}` | one dead letter: its headers and payload |
//! | `/console/parked` | parked outbox entries, with replay and discard |
//!
//! The pages are rendered on the server and read-only; an action button is turned by the one
//! script (`console.js`) into a confirmation, a reason, and a `POST` to the JSON API with the
//! operator's token, so the console needs nothing the endpoint does not already guard: no
//! cookie, hence no cross-site request to forge. On top of escaping every value they show, the
//! pages forbid inline scripts and scripts from anywhere but the endpoint itself
//! (`Content-Security-Policy`), whose only script is that file.

mod pages;
mod svg;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, OriginalUri, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::Markup;

use super::Shared;
use super::api::{self, Filter};
use crate::store::InstanceQuery;
use pages::Root;

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/console", get(instances))
        .route("/console/instances/{id}", get(instance))
        .route("/console/dead-letters", get(dead_letters))
        .route("/console/dead-letters/{subscription}/{message_id}", get(dead_letter))
        .route("/console/parked", get(parked))
        .route("/console/assets/console.css", get(|| asset("text/css", include_str!("console.css"))))
        .route("/console/assets/console.js", get(|| asset("text/javascript", include_str!("console.js"))))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The path the endpoint's router is mounted at (`""` at the root, `/sagas` when nested so):
/// the original request path less the part this router saw.
struct Mount(String);

impl<S: Send + Sync> FromRequestParts<S> for Mount {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let seen = parts.uri.path();
        let original = parts.extensions.get::<OriginalUri>().map_or(seen, |o| o.0.path());
        // Asked for the mount point itself, the nested router sees `/`.
        let mount = if seen == "/" { original } else { original.strip_suffix(seen).unwrap_or("") };
        Ok(Mount(mount.trim_end_matches('/').to_owned()))
    }
}

/// A page, or the same frame with what went wrong, and the headers every page carries.
fn respond(root: &Root, result: Result<Markup, api::Failure>) -> Response {
    let (status, markup) = match result {
        Ok(markup) => (StatusCode::OK, markup),
        Err(api::Failure(status, message)) => (status, pages::page(root, "Error", pages::error(&message))),
    };
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(pages::CONTENT_SECURITY_POLICY));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

async fn instances(
    State(shared): State<Shared>,
    mount: Mount,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Response {
    let root = Root(&mount.0);
    let result = async {
        let Query(filter) = filter?;
        let page = api::listing(&shared.admin, &filter).await?;
        let counts = shared.admin.counts(&InstanceQuery::default()).await?;
        let listing = pages::Listing { filter: &filter.text, key: filter.key.as_deref(), counts: &counts, page: &page };
        Ok(pages::page(&root, "Instances", pages::instances(&root, &listing)))
    };
    respond(&root, result.await)
}

async fn instance(State(shared): State<Shared>, mount: Mount, Path(id): Path<String>) -> Response {
    let root = Root(&mount.0);
    let result = async {
        let id = api::instance_id(&id)?;
        let Some(detail) = shared.admin.inspect(id, 200).await? else {
            return Err(api::Failure(StatusCode::NOT_FOUND, format!("There is no instance {id}.")));
        };
        let diagram = shared.admin.diagram(&detail.summary.saga);
        let title = format!("{} {}", detail.summary.saga, detail.summary.key);
        Ok(pages::page(&root, &title, pages::instance(&root, &detail, diagram.as_ref())))
    };
    respond(&root, result.await)
}

async fn dead_letters(
    State(shared): State<Shared>,
    mount: Mount,
    filter: Result<Query<api::DeadLetterFilter>, QueryRejection>,
) -> Response {
    let root = Root(&mount.0);
    let result = async {
        let Query(filter) = filter?;
        let subscription = filter.subscription.as_deref().filter(|s| !s.is_empty());
        let dead = shared.admin.dead_letters(subscription, crate::admin::MAX_PAGE).await?;
        let subscriptions: Vec<&str> = shared.admin.subscriptions.iter().map(|s| &**s).collect();
        Ok(pages::page(&root, "Dead letters", pages::dead_letters(&root, subscription, &subscriptions, &dead)))
    };
    respond(&root, result.await)
}

async fn dead_letter(
    State(shared): State<Shared>,
    mount: Mount,
    Path((subscription, message_id)): Path<(String, String)>,
) -> Response {
    let root = Root(&mount.0);
    let result = async {
        let id = api::message_id(&message_id)?;
        let dead = api::find_dead_letter(&shared.admin, &subscription, id).await?;
        Ok(pages::page(&root, "Dead letter", pages::dead_letter(&root, &dead)))
    };
    respond(&root, result.await)
}

async fn parked(State(shared): State<Shared>, mount: Mount) -> Response {
    let root = Root(&mount.0);
    let result = async {
        let parked = shared.admin.parked(None, crate::admin::MAX_PAGE).await?;
        Ok(pages::page(&root, "Parked messages", pages::parked(&root, &parked)))
    };
    respond(&root, result.await)
}
