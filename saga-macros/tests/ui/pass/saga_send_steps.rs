use std::time::Duration;

use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

macro_rules! messages {
    ($($ty:ident = $name:literal),*) => {$(
        #[derive(Serialize, Deserialize, Message)]
        #[message(name = $name)]
        struct $ty { #[correlation] id: u32 }
    )*};
}
messages!(Go = "go", Reserve = "reserve", Reserved = "reserved", Rejected = "rejected", Release = "release",
    Released = "released", Charge = "charge", Charged = "charged", Ship = "ship", Shipped = "shipped");

#[derive(Default, Serialize, Deserialize)]
struct Order {
    id: u32,
    reserved: bool,
}

#[saga(name = "order", version = 2)]
impl Order {
    #[start]
    fn go(m: &Go) -> Self {
        Order { id: m.id, ..Order::default() }
    }

    #[step(compensate = release, timeout = "1m30s", compensation_timeout = "10s",
           compensation_retry = RetryPolicy::exponential(3, Duration::from_secs(1)))]
    fn reserve(&self) -> Reserve {
        Reserve { id: self.id }
    }

    #[reply(reserve)]
    fn reserved(&mut self, _: &Reserved) {
        self.reserved = true;
    }

    #[reply(reserve, failure)]
    fn rejected(&mut self, _: &Rejected) {}

    fn release(&self) -> Release {
        Release { id: self.id }
    }

    #[reply(release)]
    fn released(&mut self, _: &Released) {
        self.reserved = false;
    }

    #[step(pivot, name = "charge-card")]
    fn charge(&self) -> Charge {
        Charge { id: self.id }
    }

    #[reply(charge)]
    fn charged(&mut self, _: &Charged) {}

    #[step(retriable, retry = RetryPolicy::forever(Duration::from_millis(50)))]
    fn ship(&self) -> Ship {
        Ship { id: self.id }
    }

    #[reply(ship)]
    fn shipped(&mut self, _: &Shipped) {}
}

fn main() {
    let definition = <Order as Saga>::definition();
    definition.validate().unwrap();
    let names: Vec<&str> = definition.steps().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["reserve", "charge-card", "ship"]);
    assert_eq!((Order::NAME, Order::VERSION), ("order", 2));
    assert!(definition.steps()[0].has_compensation());
}
