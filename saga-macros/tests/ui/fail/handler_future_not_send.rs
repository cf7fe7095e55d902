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

#[handler]
async fn charge(cmd: Charge, ctx: &mut HandlerContext) -> Result<Charged, HandlerError> {
    let counter = std::rc::Rc::new(cmd.id);
    let _: Option<u32> = ctx.load("x").await?;
    Ok(Charged { id: *counter })
}

fn main() {}
