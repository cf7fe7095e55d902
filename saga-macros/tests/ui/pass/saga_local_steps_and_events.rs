use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(name = "quota.requested")]
struct Requested {
    #[correlation]
    id: u32,
}

#[derive(Serialize, Deserialize, Message)]
#[message(name = "quota.noted")]
struct Noted {
    #[correlation]
    id: u32,
}

#[derive(Serialize, Deserialize, Message)]
#[message(name = "quota.cancelled")]
struct Cancelled {
    #[correlation]
    id: u32,
}

#[derive(Default, Serialize, Deserialize)]
struct Quota {
    id: u32,
    reserved: bool,
    notes: u32,
}

#[saga]
impl Quota {
    #[start]
    fn requested(r: &Requested) -> Self {
        Quota { id: r.id, ..Quota::default() }
    }

    #[step(compensate = release, timeout = "5s")]
    async fn reserve(mut self, _ctx: StepContext) -> Result<Self, StepError> {
        self.reserved = true;
        Ok(self)
    }

    async fn release(mut self, _ctx: StepContext) -> Result<Self, StepError> {
        self.reserved = false;
        Ok(self)
    }

    #[on]
    fn noted(&mut self, _: &Noted) {
        self.notes += 1;
    }

    #[on]
    fn cancelled(&mut self, _: &Cancelled) -> EventOutcome {
        EventOutcome::Abort("cancelled".into())
    }
}

fn main() {
    assert_eq!(Quota::NAME, "Quota");
    assert!(Quota::mermaid().contains("undo reserve"));
}
