//! The ordering flow of eShopOnContainers as a saga: its messages and the saga itself.
//!
//! order submitted → reserve stock (compensation: release stock) → charge payment (pivot;
//! its failure releases the stock) → ship (retriable until it succeeds).

use std::time::Duration;

use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: u32,
    pub units: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[message(name = "ordering.order-submitted")]
pub struct OrderSubmitted {
    #[correlation]
    pub order_id: Uuid,
    pub buyer: String,
    pub items: Vec<OrderItem>,
    pub total_cents: u64,
}

/// Commands and replies that only carry the order (and sometimes its lines).
macro_rules! order_messages {
    ($($ty:ident = $name:literal { $($field:ident: $fty:ty),* }),* $(,)?) => {$(
        #[derive(Debug, Clone, Serialize, Deserialize, Message)]
        #[message(name = $name)]
        pub struct $ty {
            #[correlation]
            pub order_id: Uuid,
            $(pub $field: $fty,)*
        }
    )*};
}

order_messages! {
    ReserveStock = "catalog.reserve-stock" { items: Vec<OrderItem> },
    StockReserved = "catalog.stock-reserved" {},
    StockRejected = "catalog.stock-rejected" { missing: Vec<u32> },
    ReleaseStock = "catalog.release-stock" {},
    StockReleased = "catalog.stock-released" {},
    ChargePayment = "payment.charge" { buyer: String, amount_cents: u64 },
    PaymentSucceeded = "payment.succeeded" {},
    PaymentFailed = "payment.failed" { reason: String },
    ShipOrder = "shipping.ship-order" { items: Vec<OrderItem> },
    OrderShipped = "shipping.order-shipped" {},
    ShippingDelayed = "shipping.delayed" {},
}

/// Goods arrived at the warehouse (an integration event no saga waits for).
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[message(name = "catalog.stock-added")]
pub struct StockAdded {
    pub product_id: u32,
    pub units: u32,
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

#[saga(name = "order-fulfilment")]
impl OrderSaga {
    #[start]
    pub fn submitted(o: &OrderSubmitted) -> Self {
        let (order_id, buyer, items, total_cents) = (o.order_id, o.buyer.clone(), o.items.clone(), o.total_cents);
        OrderSaga { order_id, buyer, items, total_cents, ..OrderSaga::default() }
    }

    #[step(compensate = release_stock, timeout = "30s")]
    fn reserve_stock(&self) -> ReserveStock {
        ReserveStock { order_id: self.order_id, items: self.items.clone() }
    }

    #[reply(reserve_stock)]
    fn stock_reserved(&mut self, _: &StockReserved) {
        self.stock_reserved = true;
    }

    #[reply(reserve_stock, failure)]
    fn stock_rejected(&mut self, r: &StockRejected) {
        self.failure = Some(format!("out of stock: {:?}", r.missing));
    }

    fn release_stock(&self) -> ReleaseStock {
        ReleaseStock { order_id: self.order_id }
    }

    #[reply(release_stock)]
    fn stock_released(&mut self, _: &StockReleased) {
        self.stock_reserved = false;
    }

    #[step(pivot, timeout = "30s", retry = payment_retry())]
    fn charge_payment(&self) -> ChargePayment {
        ChargePayment { order_id: self.order_id, buyer: self.buyer.clone(), amount_cents: self.total_cents }
    }

    #[reply(charge_payment)]
    fn paid(&mut self, _: &PaymentSucceeded) {
        self.paid = true;
    }

    #[reply(charge_payment, failure)]
    fn payment_failed(&mut self, f: &PaymentFailed) {
        self.failure = Some(f.reason.clone());
    }

    #[step(retriable, retry = RetryPolicy::forever(Duration::from_millis(20)).max_delay(Duration::from_secs(5)))]
    fn ship(&self) -> ShipOrder {
        ShipOrder { order_id: self.order_id, items: self.items.clone() }
    }

    #[reply(ship)]
    fn shipped(&mut self, _: &OrderShipped) {
        self.shipped = true;
    }

    #[reply(ship, failure)]
    fn shipping_delayed(&mut self, _: &ShippingDelayed) {}
}

/// `--payment-outage`: the card processor of this order is unreachable until this moment.
pub static PAYMENT_OUTAGE: std::sync::OnceLock<(uuid::Uuid, std::time::Instant)> = std::sync::OnceLock::new();

/// How an unanswered charge is retried: until it is answered (a pivot's default), or, in a run
/// with `--payment-outage`, not at all: the order is parked as failed for a person to look
/// at the processor and retry it.
pub fn payment_retry() -> RetryPolicy {
    match PAYMENT_OUTAGE.get() {
        Some(_) => RetryPolicy::never(),
        None => RetryPolicy::forever(std::time::Duration::from_secs(1)).max_delay(std::time::Duration::from_secs(60)),
    }
}
