//! The benchmark's participants for the order saga, and a saga that stays in flight.
//!
//! The participants keep one record per order (a reservation, a charge, a shipment) through the
//! handler context, so each of their commits carries an inbox entry, a record and a reply, as
//! the example's services do. Unlike the example they share no stock counters (those would
//! measure contention on 20 records rather than the engine) and never delay a shipment (the
//! example's 20 ms retry would dominate latency). Buyers named `declined-*` (every tenth order
//! of `workload::order`) have their payment refused, so 10% of the sagas compensate.

use sagaflow::engine::SagaRuntimeBuilder;
use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::*;

/// The first order id of the parked sagas (the workload's start at `0x5a6a…`).
pub const PARK_BASE: u128 = 0x0_9a4c_0000_0000_0000_0000_0000_0000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reservation {
    items: Vec<OrderItem>,
    released: bool,
}

#[handler(name = "catalog.reserve", scope = "catalog")]
async fn reserve_stock(cmd: ReserveStock, ctx: &mut HandlerContext) -> Result<StockReserved, HandlerError> {
    ctx.save(&format!("reservation/{}", cmd.order_id), &Reservation { items: cmd.items, released: false }).await?;
    Ok(StockReserved { order_id: cmd.order_id })
}

#[handler(name = "catalog.release", scope = "catalog")]
async fn release_stock(cmd: ReleaseStock, ctx: &mut HandlerContext) -> Result<StockReleased, HandlerError> {
    let key = format!("reservation/{}", cmd.order_id);
    if let Some(mut r) = ctx.load::<Reservation>(&key).await? {
        r.released = true;
        ctx.save(&key, &r).await?;
    }
    Ok(StockReleased { order_id: cmd.order_id })
}

#[handler(name = "payment.charge")]
async fn charge_payment(
    cmd: ChargePayment,
    ctx: &mut HandlerContext,
) -> Result<Result<PaymentSucceeded, PaymentFailed>, HandlerError> {
    if cmd.buyer.starts_with("declined-") {
        return Ok(Err(PaymentFailed { order_id: cmd.order_id, reason: "card declined".into() }));
    }
    ctx.save(&format!("charge/{}", cmd.order_id), &cmd.amount_cents).await?;
    Ok(Ok(PaymentSucceeded { order_id: cmd.order_id }))
}

#[handler(name = "shipping.ship")]
async fn ship_order(cmd: ShipOrder, ctx: &mut HandlerContext) -> Result<OrderShipped, HandlerError> {
    let units: u32 = cmd.items.iter().map(|i| i.units).sum();
    ctx.save(&format!("shipment/{}", cmd.order_id), &units).await?;
    Ok(OrderShipped { order_id: cmd.order_id })
}

/// Starts a [`Parked`] saga.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[message(name = "bench.order-parked")]
pub struct OrderParked {
    #[correlation]
    pub order_id: Uuid,
    pub buyer: String,
    pub items: Vec<OrderItem>,
    pub total_cents: u64,
}

/// The parked saga's first command: nobody subscribes to it, so it is never answered.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[message(name = "bench.hold-stock")]
pub struct HoldStock {
    #[correlation]
    pub order_id: Uuid,
    pub items: Vec<OrderItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[message(name = "bench.stock-held")]
pub struct StockHeld {
    #[correlation]
    pub order_id: Uuid,
}

/// An order saga whose first step waits a day for its reply: it stays in flight (status
/// `Running`, a pending timeout timer) for the whole benchmark. Its state is the order
/// saga's, so an instance weighs what an order's does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Parked {
    pub order: OrderSaga,
}

#[saga(name = "bench-parked-order")]
impl Parked {
    #[start]
    fn submitted(o: &OrderParked) -> Self {
        let order = OrderSaga {
            order_id: o.order_id,
            buyer: o.buyer.clone(),
            items: o.items.clone(),
            total_cents: o.total_cents,
            ..OrderSaga::default()
        };
        Parked { order }
    }

    #[step(timeout = "24h")]
    fn hold(&self) -> HoldStock {
        HoldStock { order_id: self.order.order_id, items: self.order.items.clone() }
    }

    #[reply(hold)]
    fn held(&mut self, _: &StockHeld) {
        self.order.stock_reserved = true;
    }
}

/// The `n`-th parked order: the workload's order `n` under another id.
pub fn parked_order(n: u64) -> OrderParked {
    let o = crate::workload::order(u32::try_from(n % u64::from(u32::MAX)).unwrap_or(0));
    OrderParked {
        order_id: crate::probe::parked_order_id(n),
        buyer: o.buyer,
        items: o.items,
        total_cents: o.total_cents,
    }
}

/// Registers the order saga, the parked saga and the participants.
pub fn register(builder: SagaRuntimeBuilder) -> SagaRuntimeBuilder {
    builder
        .saga::<OrderSaga>()
        .saga::<Parked>()
        .handler(reserve_stock)
        .handler(release_stock)
        .handler(charge_payment)
        .handler(ship_order)
}
