//! The JSON routes: query strings in, [`Admin`](crate::admin::Admin)'s answers out.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::Shared;
use crate::Error;
use crate::admin::{Admin, FilterText, InstancePage, Operation};
use crate::message::Timestamp;
use crate::store::{InstanceQuery, StoreError};

/// How many instances a listing returns when the caller does not say.
const DEFAULT_PAGE: usize = 50;
/// How many history entries an inspection returns when the caller does not say.
const DEFAULT_HISTORY: usize = 100;

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
        .route("/api/instances", get(list))
        .route("/api/counts", get(counts))
        .route("/api/instances/{id}", get(inspect))
        .route("/api/instances/{id}/history", get(history))
        .route("/api/instances/{id}/{action}", post(act))
        .route("/api/actions/{action}", post(act_on))
        .route("/api/parked", get(parked))
        .route("/api/parked/{seq}/{verb}", post(parked_action))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/dead-letters/{subscription}/{message_id}", get(dead_letter))
        .route("/api/dead-letters/{subscription}/{message_id}/{verb}", post(dead_letter_action))
}

/// An error as the endpoint answers it.
pub(super) fn failure(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// An error as a status and a message: JSON here, a page in the console.
pub(super) struct Failure(pub(super) StatusCode, pub(super) String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        failure(self.0, self.1)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Refused { .. } => StatusCode::CONFLICT,
            Error::Config(_) | Error::Codec(_) => StatusCode::BAD_REQUEST,
            Error::Store(StoreError::Io(_) | StoreError::Broken { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, e.to_string())
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, message.into())
}

impl From<QueryRejection> for Failure {
    fn from(e: QueryRejection) -> Self {
        bad(format!("bad query string: {}", e.body_text()))
    }
}

type Answer<T> = Result<Json<T>, Failure>;

/// The filters of a listing, a count and a bulk action, as query parameters.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filter {
    #[serde(flatten)]
    pub(super) text: FilterText,
    pub(super) key: Option<String>,
    limit: Option<usize>,
}

impl Filter {
    fn query(&self, now: Timestamp) -> Result<InstanceQuery, Failure> {
        self.text.query(now).map_err(|e| bad(e.to_string()))
    }
}

async fn ready(State(shared): State<Shared>) -> Response {
    let readiness = shared.admin.readiness().await;
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(readiness)).into_response()
}

/// The page of instances `filter` asks for.
pub(super) async fn listing(admin: &Admin, filter: &Filter) -> Result<InstancePage, Failure> {
    let query = filter.query(admin.core.clock.now())?;
    if let Some(key) = filter.key.as_deref().filter(|k| !k.is_empty()) {
        // An id follows from saga and key: a lookup, not a scan; the other filters still apply.
        let found = admin.find(key, query.saga.as_deref()).await?;
        let instances = found
            .into_iter()
            .filter(|i| query.status.is_none_or(|s| s == i.status))
            .filter(|i| query.updated_before.is_none_or(|t| i.updated_at < t))
            .collect();
        return Ok(InstancePage { instances, next: None });
    }
    Ok(admin.list(&query, filter.limit.unwrap_or(DEFAULT_PAGE)).await?)
}

async fn list(State(shared): State<Shared>, filter: Result<Query<Filter>, QueryRejection>) -> Answer<InstancePage> {
    let Query(filter) = filter?;
    Ok(Json(listing(&shared.admin, &filter).await?))
}

async fn counts(
    State(shared): State<Shared>,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Answer<Vec<crate::store::InstanceCount>> {
    let Query(filter) = filter?;
    let query = filter.query(shared.admin.core.clock.now())?;
    Ok(Json(shared.admin.counts(&query).await?))
}

pub(super) fn instance_id(id: &str) -> Result<Uuid, Failure> {
    id.parse().map_err(|_| bad(format!("{id:?} is not an instance id (a UUID)")))
}

#[derive(Debug, Deserialize)]
struct Paging {
    after: Option<u64>,
    limit: Option<usize>,
    history: Option<usize>,
}

async fn inspect(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Answer<crate::admin::InstanceDetail> {
    let (id, Query(paging)) = (instance_id(&id)?, paging?);
    let history = paging.history.unwrap_or(DEFAULT_HISTORY).min(crate::admin::MAX_PAGE);
    match shared.admin.inspect(id, history).await? {
        Some(detail) => Ok(Json(detail)),
        None => Err(Error::NotFound(format!("instance {id}")).into()),
    }
}

async fn history(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Answer<Vec<crate::store::HistoryEntry>> {
    let (id, Query(paging)) = (instance_id(&id)?, paging?);
    let limit = paging.limit.unwrap_or(DEFAULT_HISTORY).min(crate::admin::MAX_PAGE);
    Ok(Json(shared.admin.history(id, paging.after, limit).await?))
}

/// A mutating call's body: who asks, and why (both recorded in the instance's history).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    by: Option<String>,
    reason: Option<String>,
}

impl Request {
    fn by(&self) -> &str {
        self.by.as_deref().filter(|b| !b.trim().is_empty()).unwrap_or("admin-http")
    }

    fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or("")
    }
}

/// The body is optional (an empty one is `{}`), and read whatever its content type says.
fn request(body: &[u8]) -> Result<Request, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Request::default());
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body (expected {{\"reason\": …, \"by\": …}}): {e}")))
}

fn operation(action: &str) -> Result<Operation, Failure> {
    action.parse::<Operation>().map_err(|e| bad(e.to_string()))
}

async fn act(
    State(shared): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Answer<crate::admin::InstanceSummary> {
    let (id, operation, request) = (instance_id(&id)?, operation(&action)?, request(&body)?);
    Ok(Json(shared.admin.act(id, operation, request.by(), request.reason()).await?))
}

async fn act_on(
    State(shared): State<Shared>,
    Path(action): Path<String>,
    filter: Result<Query<Filter>, QueryRejection>,
    body: Bytes,
) -> Answer<Vec<crate::admin::ActionResult>> {
    let (operation, Query(filter), request) = (operation(&action)?, filter?, request(&body)?);
    let query = filter.query(shared.admin.core.clock.now())?;
    if filter.text.is_empty() {
        return Err(bad("a bulk action needs a filter (saga, status or older_than): it would act on every instance"));
    }
    let limit = filter.limit.unwrap_or(crate::admin::MAX_PAGE).min(crate::admin::MAX_PAGE);
    Ok(Json(shared.admin.act_on(&query, operation, request.by(), request.reason(), limit).await?))
}

async fn parked(
    State(shared): State<Shared>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Answer<Vec<crate::admin::ParkedMessage>> {
    let Query(paging) = paging?;
    Ok(Json(shared.admin.parked(paging.after, paging.limit.unwrap_or(DEFAULT_PAGE)).await?))
}

async fn parked_action(
    State(shared): State<Shared>,
    Path((seq, verb)): Path<(u64, String)>,
) -> Result<Json<serde_json::Value>, Failure> {
    match verb.as_str() {
        "replay" => shared.admin.replay_parked(seq).await?,
        "discard" => shared.admin.discard_parked(seq).await?,
        other => return Err(bad(format!("{other:?}: a parked entry can be replayed or discarded"))),
    }
    Ok(Json(serde_json::json!({ "seq": seq, "done": verb })))
}

#[derive(Debug, Deserialize)]
pub(super) struct DeadLetterFilter {
    pub(super) subscription: Option<String>,
    limit: Option<usize>,
}

async fn dead_letters(
    State(shared): State<Shared>,
    filter: Result<Query<DeadLetterFilter>, QueryRejection>,
) -> Answer<Vec<crate::admin::DeadMessage>> {
    let Query(filter) = filter?;
    let subscription = filter.subscription.as_deref().filter(|s| !s.is_empty());
    Ok(Json(shared.admin.dead_letters(subscription, filter.limit.unwrap_or(DEFAULT_PAGE)).await?))
}

pub(super) fn message_id(id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id).map_err(|e| bad(format!("{id:?} is not a message id: {e}")))
}

/// The dead letter of a message on a subscription, or 404.
pub(super) async fn find_dead_letter(
    admin: &Admin,
    subscription: &str,
    message_id: Uuid,
) -> Result<crate::admin::DeadLetterDetail, Failure> {
    admin.dead_letter(subscription, message_id).await?.ok_or_else(|| {
        Error::NotFound(format!("a dead letter of message {message_id} on subscription {subscription:?}")).into()
    })
}

async fn dead_letter(
    State(shared): State<Shared>,
    Path((subscription, id)): Path<(String, String)>,
) -> Answer<crate::admin::DeadLetterDetail> {
    Ok(Json(find_dead_letter(&shared.admin, &subscription, message_id(&id)?).await?))
}

async fn dead_letter_action(
    State(shared): State<Shared>,
    Path((subscription, message_id, verb)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Failure> {
    let message_id = self::message_id(&message_id)?;
    let request = request(&body)?;
    let (by, reason) = (request.by(), request.reason());
    let count = match verb.as_str() {
        "replay" => shared.admin.replay_dead_letter(&subscription, message_id, by, reason).await?,
        "discard" => shared.admin.discard_dead_letter(&subscription, message_id, by, reason).await?,
        other => return Err(bad(format!("{other:?}: a dead letter can be replayed or discarded"))),
    };
    Ok(Json(
        serde_json::json!({ "subscription": subscription, "message_id": message_id, "done": verb, "count": count }),
    ))
}
