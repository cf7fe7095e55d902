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

// A mistake the macro reports (no #[start]): the saga still has a stub Saga impl, so
// registering it reports nothing more.
#[saga]
impl Order {
    #[step]
    fn reserve(&self) -> Reserve {
        Reserve { id: self.id }
    }

    #[reply(reserve)]
    fn reserved(&mut self, _: &Reserved) {}
}

fn main() {
    let _ = SagaRuntime::builder().saga::<Order>();
}
