//! Two message types of one saga with one wire name compile (the macros cannot compare the
//! names without also reporting every type that is not a message a second time) and are refused
//! when the saga is registered, with the name and the saga.

use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(name = "go")]
struct Go {
    #[correlation]
    id: u32,
}

#[derive(Serialize, Deserialize, Message)]
#[message(name = "reserve")]
struct Reserve {
    id: u32,
}

#[derive(Serialize, Deserialize, Message)]
#[message(name = "reserved")]
struct Reserved {
    id: u32,
}

#[derive(Serialize, Deserialize, Message)]
#[message(name = "reserved")]
struct ReservedAgain {
    #[correlation]
    id: u32,
}

#[derive(Default, Serialize, Deserialize)]
struct Order {
    id: u32,
}

#[saga(name = "order")]
impl Order {
    #[start]
    fn go(m: &Go) -> Self {
        Order { id: m.id }
    }

    #[step]
    fn reserve(&self) -> Reserve {
        Reserve { id: self.id }
    }

    #[reply(reserve)]
    fn reserved(&mut self, _: &Reserved) {}

    #[on]
    fn reserved_again(&mut self, _: &ReservedAgain) {}
}

#[tokio::test]
async fn a_saga_with_two_messages_of_one_wire_name_is_refused_at_registration() {
    let built = SagaRuntime::builder().store(MemoryStore::new()).saga::<Order>().build().await;
    let Err(Error::Config(reason)) = built else { panic!("expected a configuration error") };
    assert!(reason.contains(r#"saga "order" handles message "reserved" in two places"#), "{reason}");
}
