//! `sagaflow`: list, inspect and repair saga instances.
//!
//! It speaks to a runtime's admin endpoint (`--url`, feature `admin` of the library), or opens
//! a sled store directly (`--store DIR`) when no runtime holds it, for offline inspection and
//! for parked entries. Tables for people, `--json` for scripts (the endpoint's JSON as is).
//!
//! ```text
//! sagaflow instances list --saga order-fulfilment --status failed
//! sagaflow instances show 0b6c…
//! sagaflow instances retry 0b6c… --reason "card limit raised"
//! sagaflow instances abort --status failed --older-than 1h --reason "supplier gone"
//! sagaflow dead-letters list
//! sagaflow dead-letters show 0193… --subscription shipping
//! sagaflow dead-letters replay 0193… --subscription shipping --reason "carrier API back"
//! sagaflow --store ./data/order-saga --json instances counts
//! ```

mod backend;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sagaflow::admin::Operation;

use backend::Backend;

#[derive(Debug, Parser)]
#[command(name = "sagaflow", version, about = "List, inspect and repair saga instances")]
struct Cli {
    /// The runtime's admin endpoint.
    #[arg(long, env = "SAGAFLOW_URL", default_value = "http://127.0.0.1:9180", global = true)]
    url: String,
    /// Open this sled store directly instead (no runtime may hold it).
    #[arg(long, global = true, conflicts_with = "url")]
    store: Option<PathBuf>,
    /// The bearer token for actions (the endpoint's operator set it).
    #[arg(long, env = "SAGAFLOW_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Saga instances.
    #[command(subcommand)]
    Instances(Instances),
    /// Outbox entries the relay parked.
    #[command(subcommand)]
    Parked(Parked),
    /// Messages the bus dead-lettered.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetters),
    /// Whether the runtime is ready: store, bus, consumers, relay backlog.
    Ready,
}

#[derive(Debug, Subcommand)]
enum Instances {
    /// A page of instances.
    List {
        #[command(flatten)]
        filter: Filter,
        /// How many at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Go on after this cursor (printed under the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Only the instance(s) started with this correlation key.
        #[arg(long)]
        key: Option<String>,
    },
    /// How many instances, by saga and status.
    Counts {
        #[command(flatten)]
        filter: Filter,
    },
    /// One instance in full: state, where it waits, history, its messages, the diagram.
    Show {
        id: uuid::Uuid,
        /// History entries to show.
        #[arg(long, default_value_t = 100)]
        history: usize,
    },
    /// A page of an instance's history.
    History {
        id: uuid::Uuid,
        /// After this version.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Run the failed step or compensation again.
    Retry(Action),
    /// Mark the failed step or compensation done and go on.
    Skip(Action),
    /// Compensate now.
    Abort(Action),
    /// Go on from where it was parked.
    Resume(Action),
    /// Stop without compensating.
    Cancel(Action),
}

impl Filter {
    /// The filter as the library parses it (the endpoint parses the same).
    fn text(&self) -> sagaflow::admin::FilterText {
        sagaflow::admin::FilterText {
            saga: self.saga.clone(),
            status: self.status.clone(),
            older_than: self.older_than.clone(),
            after: None,
        }
    }
}

/// Which instances: every filter given must match.
#[derive(Debug, Clone, Default, Args)]
struct Filter {
    /// The saga's name.
    #[arg(long)]
    saga: Option<String>,
    /// running, compensating, completed, compensated, failed or cancelled.
    #[arg(long)]
    status: Option<String>,
    /// Unchanged for longer than this (90s, 15m, 1h, 2days).
    #[arg(long)]
    older_than: Option<String>,
}

#[derive(Debug, Args)]
struct Action {
    /// The instance; without it, every instance the filter matches.
    id: Option<uuid::Uuid>,
    #[command(flatten)]
    filter: Filter,
    /// At most this many instances (with a filter).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[command(flatten)]
    why: Why,
}

/// Who asks for an action and why: recorded in the instance's history (logged for dead letters).
#[derive(Debug, Args)]
struct Why {
    /// Why.
    #[arg(long, default_value = "")]
    reason: String,
    /// Who asks.
    #[arg(long, env = "USER", default_value = "cli")]
    by: String,
}

/// One message's dead letters on one subscription.
#[derive(Debug, Args)]
struct DeadLetter {
    /// The message id (as `dead-letters list` shows it).
    message_id: uuid::Uuid,
    /// The subscription it was dead-lettered on.
    #[arg(long)]
    subscription: String,
    #[command(flatten)]
    why: Why,
}

#[derive(Debug, Subcommand)]
enum Parked {
    /// Parked outbox entries, oldest first.
    List {
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put a parked entry back into the outbox.
    Replay { seq: u64 },
    /// Delete a parked entry for good.
    Discard { seq: u64 },
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// Dead letters, oldest first.
    List {
        /// Only this subscription's (required with --store).
        #[arg(long)]
        subscription: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One dead letter in full: its headers and payload.
    Show {
        /// The message id (as `dead-letters list` shows it).
        message_id: uuid::Uuid,
        /// The subscription it was dead-lettered on.
        #[arg(long)]
        subscription: String,
    },
    /// Send a dead letter back to its subscription, with a fresh retry budget (fix the cause first).
    Replay(DeadLetter),
    /// Delete a dead letter for good.
    Discard(DeadLetter),
}

/// What a command asks, whichever backend answers it.
#[derive(Debug)]
pub(crate) enum Request {
    List { filter: Filter, limit: usize, after: Option<String>, key: Option<String> },
    Counts { filter: Filter },
    Show { id: uuid::Uuid, history: usize },
    History { id: uuid::Uuid, after: Option<u64>, limit: usize },
    Act { operation: Operation, id: Option<uuid::Uuid>, filter: Filter, limit: usize, reason: String, by: String },
    Parked { after: Option<u64>, limit: usize },
    ReplayParked { seq: u64 },
    DiscardParked { seq: u64 },
    DeadLetters { subscription: Option<String>, limit: usize },
    ShowDeadLetter { subscription: String, message_id: uuid::Uuid },
    SettleDeadLetter { replay: bool, subscription: String, message_id: uuid::Uuid, reason: String, by: String },
    Ready,
}

impl Command {
    fn request(self) -> Request {
        let act = |operation, a: Action| Request::Act {
            operation,
            id: a.id,
            filter: a.filter,
            limit: a.limit,
            reason: a.why.reason,
            by: a.why.by,
        };
        let settle = |replay, d: DeadLetter| Request::SettleDeadLetter {
            replay,
            subscription: d.subscription,
            message_id: d.message_id,
            reason: d.why.reason,
            by: d.why.by,
        };
        match self {
            Command::Instances(Instances::List { filter, limit, after, key }) => {
                Request::List { filter, limit, after, key }
            }
            Command::Instances(Instances::Counts { filter }) => Request::Counts { filter },
            Command::Instances(Instances::Show { id, history }) => Request::Show { id, history },
            Command::Instances(Instances::History { id, after, limit }) => Request::History { id, after, limit },
            Command::Instances(Instances::Retry(a)) => act(Operation::Retry, a),
            Command::Instances(Instances::Skip(a)) => act(Operation::Skip, a),
            Command::Instances(Instances::Abort(a)) => act(Operation::Abort, a),
            Command::Instances(Instances::Resume(a)) => act(Operation::Resume, a),
            Command::Instances(Instances::Cancel(a)) => act(Operation::Cancel, a),
            Command::Parked(Parked::List { after, limit }) => Request::Parked { after, limit },
            Command::Parked(Parked::Replay { seq }) => Request::ReplayParked { seq },
            Command::Parked(Parked::Discard { seq }) => Request::DiscardParked { seq },
            Command::DeadLetters(DeadLetters::List { subscription, limit }) => {
                Request::DeadLetters { subscription, limit }
            }
            Command::DeadLetters(DeadLetters::Show { message_id, subscription }) => {
                Request::ShowDeadLetter { subscription, message_id }
            }
            Command::DeadLetters(DeadLetters::Replay(d)) => settle(true, d),
            Command::DeadLetters(DeadLetters::Discard(d)) => settle(false, d),
            Command::Ready => Request::Ready,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let backend = match &cli.store {
        Some(dir) => Backend::offline(dir),
        None => Backend::http(&cli.url, cli.token.clone()),
    };
    let request = cli.command.request();
    let answer = match backend {
        Ok(backend) => backend.ask(&request).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(answer) => {
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
            } else {
                print!("{}", render::render(&request, &answer));
            }
            // A runtime that is not ready fails the command, for scripts and probes.
            let not_ready = matches!(request, Request::Ready) && answer["ready"] != true;
            if not_ready { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("sagaflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}
