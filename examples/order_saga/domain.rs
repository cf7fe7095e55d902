//! The ordering flow of eShopOnContainers as a saga: the messages and the saga itself.
//!
//! order submitted → reserve stock (compensation: release stock) → charge payment (pivot;
//! its failure releases the stock) → ship (retriable until it succeeds).

use std::time::Duration;

use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Implements `Message` for a type whose `order_id` correlates it with its order saga.
macro_rules! order_message {
    ($($ty:ident => $name:literal),* $(,)?) => {$(
        impl Message for $ty {
            const NAME: &'static str = $name;
            fn correlation_key(&self) -> Option<String> {
                Some(self.order_id.to_string())
            }
        }
    )*};
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: u32,
    pub units: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderSubmitted {
    pub order_id: Uuid,
    pub buyer: String,
    pub items: Vec<OrderItem>,
    pub total_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReserveStock {
    pub order_id: Uuid,
    pub items: Vec<OrderItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockReserved {
    pub order_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockRejected {
    pub order_id: Uuid,
    pub missing: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseStock {
    pub order_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockReleased {
    pub order_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargePayment {
    pub order_id: Uuid,
    pub buyer: String,
    pub amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub order_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub order_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipOrder {
    pub order_id: Uuid,
    pub items: Vec<OrderItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderShipped {
    pub order_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShippingDelayed {
    pub order_id: Uuid,
}

order_message! {
    OrderSubmitted => "ordering.order-submitted",
    ReserveStock => "catalog.reserve-stock",
    StockReserved => "catalog.stock-reserved",
    StockRejected => "catalog.stock-rejected",
    ReleaseStock => "catalog.release-stock",
    StockReleased => "catalog.stock-released",
    ChargePayment => "payment.charge",
    PaymentSucceeded => "payment.succeeded",
    PaymentFailed => "payment.failed",
    ShipOrder => "shipping.ship-order",
    OrderShipped => "shipping.order-shipped",
    ShippingDelayed => "shipping.delayed",
}

/// The saga's state: what the order needs to go forward or to be undone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OrderSaga {
    pub order_id: Uuid,
    pub buyer: String,
    pub items: Vec<OrderItem>,
    pub total_cents: u64,
    pub stock_reserved: bool,
    pub paid: bool,
    pub shipped: bool,
    pub failure: Option<String>,
}

impl OrderSaga {
    pub fn new(o: &OrderSubmitted) -> Self {
        OrderSaga {
            order_id: o.order_id,
            buyer: o.buyer.clone(),
            items: o.items.clone(),
            total_cents: o.total_cents,
            ..OrderSaga::default()
        }
    }
}

impl ChargePayment {
    pub fn for_order(o: &OrderSaga) -> Self {
        ChargePayment {
            order_id: o.order_id,
            buyer: o.buyer.clone(),
            amount_cents: o.total_cents,
        }
    }
}

impl Saga for OrderSaga {
    const NAME: &'static str = "order-fulfilment";

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new()
            .start_with(OrderSaga::new)
            .step(
                Step::send("reserve_stock", |o: &OrderSaga| ReserveStock {
                    order_id: o.order_id,
                    items: o.items.clone(),
                })
                .on_success(|o: &mut OrderSaga, _: &StockReserved| o.stock_reserved = true)
                .on_failure(|o: &mut OrderSaga, r: &StockRejected| {
                    o.failure = Some(format!("out of stock: {:?}", r.missing))
                })
                .timeout(Duration::from_secs(30))
                .compensate_send(|o: &OrderSaga| ReleaseStock { order_id: o.order_id })
                .on_compensated(|o: &mut OrderSaga, _: &StockReleased| o.stock_reserved = false),
            )
            .step(
                Step::send("charge_payment", ChargePayment::for_order)
                    .on_success(|o: &mut OrderSaga, _: &PaymentSucceeded| o.paid = true)
                    .on_failure(|o: &mut OrderSaga, f: &PaymentFailed| o.failure = Some(f.reason.clone()))
                    .timeout(Duration::from_secs(30))
                    .pivot(),
            )
            .step(
                Step::send("ship", |o: &OrderSaga| ShipOrder {
                    order_id: o.order_id,
                    items: o.items.clone(),
                })
                .on_success(|o: &mut OrderSaga, _: &OrderShipped| o.shipped = true)
                .on_failure(|_: &mut OrderSaga, _: &ShippingDelayed| {})
                .retry(RetryPolicy::forever(Duration::from_millis(20)).max_delay(Duration::from_secs(5)))
                .retriable(),
            )
    }
}

/// Goods arrived at the warehouse (an integration event with no saga).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockAdded {
    pub product_id: u32,
    pub units: u32,
}

impl Message for StockAdded {
    const NAME: &'static str = "catalog.stock-added";
}
