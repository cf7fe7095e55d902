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

// A mistake the macro reports (not async): the handler is still a Handler, so registering it
// reports nothing more.
#[handler]
fn charge(cmd: Charge) -> Result<Charged, HandlerError> {
    Ok(Charged { id: cmd.id })
}

fn main() {
    let _ = SagaRuntime::builder().handler(charge);
}
