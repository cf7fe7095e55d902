//! The admin endpoint: [`Admin`] over HTTP as JSON, and a web console over it (feature
//! `admin`, axum and maud).
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /health` | liveness: 200 while the process answers |
//! | `GET /ready` | [`Readiness`](super::Readiness): 200 when ready, 503 when not |
//! | `GET /api/instances?saga=&status=&older_than=&key=&after=&limit=` | a page of instances |
//! | `GET /api/counts?saga=&status=&older_than=` | counts by saga and status |
//! | `GET /api/instances/{id}?history=` | one instance in full |
//! | `GET /api/instances/{id}/history?after=&limit=` | a page of its history |
//! | `POST /api/instances/{id}/{action}` | retry, skip, abort, resume or cancel it |
//! | `POST /api/actions/{action}?saga=&status=&older_than=&limit=` | the same on every match |
//! | `GET /api/parked?after=&limit=` | parked outbox entries |
//! | `POST /api/parked/{seq}/replay`, `POST /api/parked/{seq}/discard` | replay or drop one |
//! | `GET /api/dead-letters?subscription=&limit=` | dead letters |
//! | `GET /api/dead-letters/{subscription}/{message_id}` | one in full: headers and payload |
//! | `POST /api/dead-letters/{subscription}/{message_id}/{replay\|discard}` | replay or drop one |
//! | `GET /console`, `/console/instances/{id}`, `/console/dead-letters`, `/console/parked` | the web console (see `console`): HTML pages over the same calls |
//!
//! A `POST` takes `{"reason": "…", "by": "…"}` (both optional; `by` defaults to `admin-http`).
//! Errors are `{"error": "…"}` with 400 (bad input), 401 (no or wrong token), 403 (no token is
//! configured: the endpoint is read-only), 404, 409 (the action does not apply, with why) or
//! 503 (the store is unavailable).
//!
//! **Security.** It binds to 127.0.0.1 unless told otherwise: reading instances shows their
//! state, which may hold personal data, so expose it further only behind something that
//! authenticates. Every `POST` needs `Authorization: Bearer <token>` with the token the
//! operator configured; the comparison takes the same time whatever the guess, and the token
//! is never logged nor echoed (its `Debug` is redacted). Without a configured token nothing
//! can be changed through the endpoint.

mod api;
mod console;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Admin;
use crate::Error;

/// Where the endpoint listens by default: this machine only, port 9180.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9180);

/// A bearer token for mutating calls; its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// A token; an empty one is refused (it would let any empty header through).
    pub fn new(token: impl Into<String>) -> Result<Self, Error> {
        let token = token.into();
        if token.trim().is_empty() {
            return Err(Error::Config("the admin token is empty: set a long random one, or none for read-only".into()));
        }
        Ok(Token(token.into()))
    }

    fn admits(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How the endpoint is served.
///
/// ```
/// use saga_core::admin::http::{AdminOptions, DEFAULT_BIND};
/// let options = AdminOptions::default();
/// assert_eq!(options.bind, DEFAULT_BIND);
/// assert!(options.token.is_none()); // read-only
/// let options = AdminOptions::default().bind("127.0.0.1:0".parse().unwrap()).token("s3cret-from-the-vault").unwrap();
/// assert_eq!(format!("{:?}", options.token), "Some(Token(<redacted>))");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdminOptions {
    /// The address to listen on ([`DEFAULT_BIND`]).
    pub bind: SocketAddr,
    /// The token mutating calls must present; `None`: the endpoint is read-only.
    pub token: Option<Token>,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions { bind: DEFAULT_BIND, token: None }
    }
}

impl AdminOptions {
    /// Listen on `addr` (port 0: any free port; see [`AdminEndpoint::local_addr`]).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Require `token` for mutating calls.
    pub fn token(mut self, token: impl Into<String>) -> Result<Self, Error> {
        self.token = Some(Token::new(token)?);
        Ok(self)
    }
}

#[derive(Clone)]
struct Shared {
    admin: Admin,
    token: Option<Token>,
}

/// A running endpoint; dropping it leaves it running until the runtime's process ends, and
/// [`AdminEndpoint::shutdown`] stops it.
#[derive(Debug)]
pub struct AdminEndpoint {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl AdminEndpoint {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections and waits for the requests in progress.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

impl Admin {
    /// The endpoint's routes, to serve yourself or to nest in an axum application of yours.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{admin::http::AdminOptions, engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// let app: axum::Router = axum::Router::new().nest("/sagas", runtime.admin().router(AdminOptions::default()));
    /// # let _ = app;
    /// # });
    /// ```
    pub fn router(&self, options: AdminOptions) -> Router {
        let shared = Shared { admin: self.clone(), token: options.token };
        api::routes()
            .merge(console::routes())
            .layer(middleware::from_fn_with_state(shared.clone(), authorize))
            .layer(middleware::map_response(common_headers))
            .with_state(shared)
    }

    /// Binds `options.bind` and serves the endpoint in the background.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{admin::http::AdminOptions, engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// let token = std::env::var("SAGAFLOW_ADMIN_TOKEN").unwrap_or_else(|_| "example-only".into());
    /// let options = AdminOptions::default().bind("127.0.0.1:0".parse().unwrap()).token(token).unwrap();
    /// let endpoint = runtime.admin().serve(options).await.unwrap();
    /// println!("admin endpoint on http://{}", endpoint.local_addr());
    /// endpoint.shutdown().await.unwrap();
    /// # });
    /// ```
    pub async fn serve(&self, options: AdminOptions) -> Result<AdminEndpoint, Error> {
        let listener = tokio::net::TcpListener::bind(options.bind)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {} for the admin endpoint: {e}", options.bind)))?;
        let addr = listener.local_addr().map_err(|e| Error::Config(format!("admin endpoint: {e}")))?;
        let app = self.router(options);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%addr, "admin endpoint listening");
        Ok(AdminEndpoint { addr, stop: Some(stop), task })
    }
}

/// Lets reads through; a mutating call needs the configured token.
async fn authorize(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let Some(token) = &shared.token else {
        return api::failure(
            StatusCode::FORBIDDEN,
            "this admin endpoint is read-only: no token is configured (AdminOptions::token)".into(),
        );
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(presented) if token.admits(presented) => next.run(request).await,
        _ => {
            let mut response = api::failure(
                StatusCode::UNAUTHORIZED,
                "this call changes instances: send Authorization: Bearer <the operator's token>".into(),
            );
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Instance state may be personal data: keep it out of caches; and no response is to be read
/// as anything but what it says it is.
async fn common_headers(mut response: Response) -> impl IntoResponse {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
