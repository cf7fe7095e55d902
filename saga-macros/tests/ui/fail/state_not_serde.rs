use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(name = "go")]
struct Go {
    #[correlation]
    id: u32,
}

struct Order {
    id: u32,
}

#[saga]
impl Order {
    #[start]
    fn go(m: &Go) -> Self {
        Order { id: m.id }
    }

    #[step]
    async fn work(self, _ctx: StepContext) -> Result<Self, StepError> {
        let _ = self.id;
        Ok(self)
    }
}

fn main() {}
