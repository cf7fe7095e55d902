//! `--admin ADDR`: the admin endpoint, when the example is built with `--features admin`.

use std::net::SocketAddr;

use sagaflow::prelude::*;

type Failure = Box<dyn std::error::Error>;

#[cfg(feature = "admin")]
pub type Endpoint = sagaflow::admin::http::AdminEndpoint;
#[cfg(not(feature = "admin"))]
pub type Endpoint = std::convert::Infallible;

#[cfg(feature = "admin")]
pub async fn serve(runtime: &SagaRuntime, addr: SocketAddr) -> Result<Endpoint, Failure> {
    use sagaflow::admin::http::AdminOptions;
    let mut options = AdminOptions::default().bind(addr);
    let token = std::env::var("SAGAFLOW_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    let mode = if token.is_some() { "actions need the token in SAGAFLOW_ADMIN_TOKEN" } else { "read-only: no token" };
    if let Some(token) = token {
        options = options.token(token)?;
    }
    let endpoint = runtime.admin().serve(options).await?;
    println!("admin endpoint: http://{} ({mode})", endpoint.local_addr());
    println!("web console:    http://{}/console", endpoint.local_addr());
    Ok(endpoint)
}

#[cfg(not(feature = "admin"))]
pub async fn serve(_: &SagaRuntime, _: SocketAddr) -> Result<Endpoint, Failure> {
    Err("--admin needs the admin endpoint: cargo run --features admin --example order_saga -- --admin 127.0.0.1:9180"
        .into())
}

#[cfg(feature = "admin")]
pub async fn stop(endpoint: Endpoint) -> Result<(), Failure> {
    Ok(endpoint.shutdown().await?)
}

#[cfg(not(feature = "admin"))]
pub async fn stop(endpoint: Endpoint) -> Result<(), Failure> {
    match endpoint {}
}
