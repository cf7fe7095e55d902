use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

macro_rules! messages {
    ($($ty:ident = $name:literal),*) => {$(
        #[derive(Serialize, Deserialize, Message)]
        #[message(name = $name)]
        struct $ty { #[correlation] id: u32 }
    )*};
}
messages!(Go = "go", Reserve = "reserve", Reserved = "reserved", Release = "release", Released = "released",
    Charge = "charge", Charged = "charged");

#[derive(Default, Serialize, Deserialize)]
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
        let cell = std::rc::Rc::new(self.id);
        tokio::task::yield_now().await;
        let _ = cell;
        Ok(self)
    }
}

fn main() {}
