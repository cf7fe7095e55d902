//! Who answers: a runtime's admin endpoint over HTTP, or the admin API on a sled store opened
//! here. Both answer in the endpoint's JSON, so output and scripts do not depend on which.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use sagaflow::admin::Admin;
use sagaflow::message::Timestamp;
use sagaflow::store::{InstanceQuery, SledStore};
use serde_json::Value;

use crate::{Filter, Request};

pub(crate) enum Backend {
    Http { client: reqwest::Client, base: reqwest::Url, token: Option<String> },
    Offline(Admin),
}

impl Backend {
    pub(crate) fn http(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
        Ok(Backend::Http { client: reqwest::Client::new(), base, token: token.filter(|t| !t.is_empty()) })
    }

    pub(crate) fn offline(dir: &Path) -> anyhow::Result<Self> {
        if !dir.exists() {
            bail!("there is no store at {}", dir.display());
        }
        let store = SledStore::open(dir).with_context(|| {
            format!("cannot open the store at {} (a running runtime holds it: use --url instead)", dir.display())
        })?;
        Ok(Backend::Offline(Admin::offline(store)))
    }

    pub(crate) async fn ask(&self, request: &Request) -> anyhow::Result<Value> {
        match self {
            Backend::Http { client, base, token } => http(client, base, token.as_deref(), request).await,
            Backend::Offline(admin) => offline(admin, request).await,
        }
    }
}

fn filter_params(filter: &Filter) -> Vec<(&'static str, String)> {
    let mut params = Vec::new();
    params.extend(filter.saga.clone().map(|v| ("saga", v)));
    params.extend(filter.status.clone().map(|v| ("status", v)));
    params.extend(filter.older_than.clone().map(|v| ("older_than", v)));
    params
}

async fn http(
    client: &reqwest::Client,
    base: &reqwest::Url,
    token: Option<&str>,
    request: &Request,
) -> anyhow::Result<Value> {
    // Path segments are escaped (a subscription name may hold anything), under the base's path.
    let at = |segments: &[&str]| {
        let mut url = base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("--url {base} cannot have a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok::<_, anyhow::Error>(url)
    };
    let url = |path: String| at(&path.split('/').collect::<Vec<_>>());
    let get = |path: String, params: Vec<(&'static str, String)>| async move {
        Ok::<_, anyhow::Error>(client.get(url(path)?).query(&params))
    };
    let post_to = |url: reqwest::Url, params: Vec<(&'static str, String)>, body: Value| {
        let mut builder = client.post(url).query(&params).json(&body);
        if let Some(token) = token {
            builder = builder.bearer_auth(token);
        }
        builder
    };
    let post = |path: String, params: Vec<(&'static str, String)>, body: Value| async move {
        Ok::<_, anyhow::Error>(post_to(url(path)?, params, body))
    };
    let builder = match request {
        Request::List { filter, limit, after, key } => {
            let mut params = filter_params(filter);
            params.push(("limit", limit.to_string()));
            params.extend(after.clone().map(|v| ("after", v)));
            params.extend(key.clone().map(|v| ("key", v)));
            get("api/instances".into(), params).await?
        }
        Request::Counts { filter } => get("api/counts".into(), filter_params(filter)).await?,
        Request::Show { id, history } => {
            get(format!("api/instances/{id}"), vec![("history", history.to_string())]).await?
        }
        Request::History { id, after, limit } => {
            let mut params = vec![("limit", limit.to_string())];
            params.extend(after.map(|v| ("after", v.to_string())));
            get(format!("api/instances/{id}/history"), params).await?
        }
        Request::Act { operation, id, filter, limit, reason, by } => {
            let body = serde_json::json!({ "reason": reason, "by": by });
            match id {
                Some(id) => post(format!("api/instances/{id}/{operation}"), Vec::new(), body).await?,
                None if filter.text().is_empty() => {
                    bail!("give an instance id, or a filter (--saga, --status, --older-than)")
                }
                None => {
                    let mut params = filter_params(filter);
                    params.push(("limit", limit.to_string()));
                    post(format!("api/actions/{operation}"), params, body).await?
                }
            }
        }
        Request::Parked { after, limit } => {
            let mut params = vec![("limit", limit.to_string())];
            params.extend(after.map(|v| ("after", v.to_string())));
            get("api/parked".into(), params).await?
        }
        Request::ReplayParked { seq } => post(format!("api/parked/{seq}/replay"), Vec::new(), Value::Null).await?,
        Request::DiscardParked { seq } => post(format!("api/parked/{seq}/discard"), Vec::new(), Value::Null).await?,
        Request::DeadLetters { subscription, limit } => {
            let mut params = vec![("limit", limit.to_string())];
            params.extend(subscription.clone().map(|v| ("subscription", v)));
            get("api/dead-letters".into(), params).await?
        }
        Request::ShowDeadLetter { subscription, message_id } => {
            client.get(at(&["api", "dead-letters", subscription, &message_id.to_string()])?)
        }
        Request::SettleDeadLetter { replay, subscription, message_id, reason, by } => {
            let verb = if *replay { "replay" } else { "discard" };
            let body = serde_json::json!({ "reason": reason, "by": by });
            post_to(at(&["api", "dead-letters", subscription, &message_id.to_string(), verb])?, Vec::new(), body)
        }
        Request::Ready => get("ready".into(), Vec::new()).await?,
    };
    let response = builder.send().await.with_context(|| format!("cannot reach the admin endpoint at {base}"))?;
    let status = response.status();
    let body: Value =
        response.json().await.with_context(|| format!("the endpoint at {base} answered {status} without JSON"))?;
    // `ready` answers 503 with its findings: those are the answer, not an error.
    if status.is_success() || matches!(request, Request::Ready) {
        return Ok(body);
    }
    let message = body["error"].as_str().map_or_else(|| body.to_string(), str::to_owned);
    Err(anyhow!("{message} ({status})"))
}

fn query(filter: &Filter, after: Option<&str>) -> anyhow::Result<InstanceQuery> {
    let mut text = filter.text();
    text.after = after.map(str::to_owned);
    Ok(text.query(Timestamp::now())?)
}

async fn offline(admin: &Admin, request: &Request) -> anyhow::Result<Value> {
    Ok(match request {
        Request::List { filter, limit, after, key } => {
            let query = query(filter, after.as_deref())?;
            match key {
                Some(key) => {
                    let found = admin.find(key, query.saga.as_deref()).await?;
                    serde_json::json!({ "instances": found, "next": null })
                }
                None => serde_json::to_value(admin.list(&query, *limit).await?)?,
            }
        }
        Request::Counts { filter } => serde_json::to_value(admin.counts(&query(filter, None)?).await?)?,
        Request::Show { id, history } => match admin.inspect(*id, *history).await? {
            Some(detail) => serde_json::to_value(detail)?,
            None => bail!("instance {id} not found"),
        },
        Request::History { id, after, limit } => serde_json::to_value(admin.history(*id, *after, *limit).await?)?,
        Request::Act { .. } => bail!(
            "actions on instances run the saga's code, which this command does not have: run them through the \
             admin endpoint of a runtime that runs the saga (--url)"
        ),
        Request::Parked { after, limit } => serde_json::to_value(admin.parked(*after, *limit).await?)?,
        Request::ReplayParked { seq } => {
            admin.replay_parked(*seq).await?;
            serde_json::json!({ "seq": seq, "done": "replay" })
        }
        Request::DiscardParked { seq } => {
            admin.discard_parked(*seq).await?;
            serde_json::json!({ "seq": seq, "done": "discard" })
        }
        Request::DeadLetters { subscription: None, .. } => {
            bail!("with --store, say which subscription's dead letters: --subscription NAME")
        }
        Request::DeadLetters { subscription: Some(name), limit } => {
            serde_json::to_value(admin.dead_letters(Some(name), *limit).await?)?
        }
        Request::ShowDeadLetter { subscription, message_id } => {
            match admin.dead_letter(subscription, *message_id).await? {
                Some(dead) => serde_json::to_value(dead)?,
                None => bail!("no dead letter of message {message_id} on subscription {subscription:?}"),
            }
        }
        Request::SettleDeadLetter { replay, subscription, message_id, reason, by } => {
            let count = if *replay {
                admin.replay_dead_letter(subscription, *message_id, by, reason).await?
            } else {
                admin.discard_dead_letter(subscription, *message_id, by, reason).await?
            };
            let verb = if *replay { "replay" } else { "discard" };
            serde_json::json!({ "subscription": subscription, "message_id": message_id, "done": verb, "count": count })
        }
        Request::Ready => serde_json::to_value(admin.readiness().await)?,
    })
}
