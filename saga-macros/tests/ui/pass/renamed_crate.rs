//! `crate = "..."` on every macro: the generated code names sagaflow by the path given (a
//! renamed dependency, a re-export), here a re-export in a module of the user's own.

mod deps {
    pub use sagaflow as flow;
}

use deps::flow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(name = "order.placed", crate = "crate::deps::flow")]
struct Placed {
    #[correlation]
    id: u32,
}

#[derive(Serialize, Deserialize, Message)]
#[message(name = "stock.reserve", crate = "crate::deps::flow")]
struct Reserve {
    #[correlation]
    id: u32,
}

#[derive(Serialize, Deserialize, Message)]
#[message(name = "stock.reserved", crate = "crate::deps::flow")]
struct Reserved {
    #[correlation]
    id: u32,
}

#[derive(Default, Serialize, Deserialize)]
struct Order {
    id: u32,
    reserved: bool,
}

#[saga(name = "order", crate = "crate::deps::flow")]
impl Order {
    #[start]
    fn placed(m: &Placed) -> Self {
        Order { id: m.id, ..Order::default() }
    }

    #[step(pivot)]
    fn reserve(&self) -> Reserve {
        Reserve { id: self.id }
    }

    #[reply(reserve)]
    fn reserved(&mut self, _: &Reserved) {
        self.reserved = true;
    }
}

#[handler(name = "stock.reserve", crate = "crate::deps::flow")]
async fn reserve(cmd: Reserve) -> Result<Reserved, HandlerError> {
    Ok(Reserved { id: cmd.id })
}

fn main() {
    assert_eq!(<Order as deps::flow::saga::Saga>::NAME, "order");
    assert_eq!(<Placed as deps::flow::message::Message>::NAME, "order.placed");
    assert_eq!(reserve.name(), "stock.reserve");
    let _ = SagaRuntime::builder().saga::<Order>().handler(reserve);
}
