use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(name = "ordering.order-submitted")]
struct OrderSubmitted {
    #[correlation]
    order_id: u64,
}

#[derive(Serialize, Deserialize, Message)]
struct Unnamed(#[correlation] Option<String>);

#[derive(Serialize, Deserialize, Message)]
#[message(name = "basket.checkout", correlation = Checkout::key)]
struct Checkout {
    user: String,
    basket: u32,
}

impl Checkout {
    fn key(&self) -> Option<String> {
        Some(format!("{}/{}", self.user, self.basket))
    }
}

#[derive(Serialize, Deserialize, Message)]
#[message(name = "catalog.price-changed")]
struct PriceChanged;

fn main() {
    assert_eq!(OrderSubmitted::NAME, "ordering.order-submitted");
    assert_eq!(OrderSubmitted { order_id: 7 }.correlation_key().as_deref(), Some("7"));
    assert_eq!(Unnamed::NAME, "Unnamed");
    assert_eq!(Unnamed(None).correlation_key(), None);
    assert_eq!(Checkout { user: "ann".into(), basket: 2 }.correlation_key().as_deref(), Some("ann/2"));
    assert_eq!(PriceChanged.correlation_key(), None);
}
