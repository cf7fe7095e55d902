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

#[derive(Serialize, Deserialize)]
struct Declined {
    id: u32,
}

#[handler]
async fn charge(cmd: Charge) -> Result<Charged, Declined> {
    Ok(Charged { id: cmd.id })
}

fn main() {}
