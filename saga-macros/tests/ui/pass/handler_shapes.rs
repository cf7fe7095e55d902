use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

macro_rules! messages {
    ($($ty:ident = $name:literal),*) => {$(
        #[derive(Serialize, Deserialize, Message)]
        #[message(name = $name)]
        struct $ty { #[correlation] id: u32 }
    )*};
}
messages!(Charge = "charge", Charged = "charged", Refused = "refused", Audit = "audit");

/// Explicit replies through the context.
#[handler(name = "payment.explicit", scope = "payment")]
async fn explicit(cmd: Charge, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    ctx.reply(&Charged { id: cmd.id })
}

/// The success reply as the return value.
#[handler(retry = RetryPolicy::never())]
async fn success_only(cmd: Charge, _ctx: &mut HandlerContext) -> Result<Charged, HandlerError> {
    Ok(Charged { id: cmd.id })
}

/// Success or failure reply, no context needed.
#[handler]
async fn either(cmd: Charge) -> Result<Charged, Refused> {
    if cmd.id % 2 == 0 { Ok(Charged { id: cmd.id }) } else { Err(Refused { id: cmd.id }) }
}

/// Business outcome and transient errors.
#[handler]
async fn nested(cmd: Charge, ctx: &mut HandlerContext) -> Result<Result<Charged, Refused>, HandlerError> {
    let seen: Option<u32> = ctx.load("seen").await?;
    Ok(if seen.is_some() { Err(Refused { id: cmd.id }) } else { Ok(Charged { id: cmd.id }) })
}

/// An event with no reply at all.
#[handler]
async fn audit(_event: Audit) {}

fn main() {
    let _ = SagaRuntime::builder()
        .handler(explicit)
        .handler(success_only)
        .handler(either)
        .handler(nested)
        .handler(audit);
    assert_eq!(explicit.name(), "payment.explicit");
    assert_eq!(explicit.scope(), "payment");
    assert_eq!(either.name(), "either");
}
