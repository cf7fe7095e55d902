//! The catalog, payment and shipping services as participants. Each keeps its own records
//! through the handler context, so its effects commit atomically with its inbox and replies.

use std::collections::BTreeMap;
use std::time::Instant;

use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

use super::domain::*;

/// A reservation as the catalog keeps it; `released` makes release idempotent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reservation {
    pub items: Vec<OrderItem>,
    pub released: bool,
}

pub fn stock_key(product_id: u32) -> String {
    format!("stock/{product_id:05}")
}

pub fn reservation_key(order_id: uuid::Uuid) -> String {
    format!("reservation/{order_id}")
}

/// Adds delivered goods to the stock.
#[handler(name = "catalog.restock", scope = "catalog")]
pub async fn restock(ev: StockAdded, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    let key = stock_key(ev.product_id);
    let available: u32 = ctx.load(&key).await?.unwrap_or(0);
    ctx.save(&key, &(available + ev.units)).await
}

/// Reserves stock for every line of an order, or none.
#[handler(name = "catalog.reserve", scope = "catalog")]
pub async fn reserve_stock(
    cmd: ReserveStock,
    ctx: &mut HandlerContext,
) -> Result<Result<StockReserved, StockRejected>, HandlerError> {
    // Lines may name a product twice: check and take the total per product.
    let mut wanted = BTreeMap::new();
    for item in &cmd.items {
        *wanted.entry(item.product_id).or_insert(0u32) += item.units;
    }
    let mut left = Vec::with_capacity(wanted.len());
    let mut missing = Vec::new();
    for (&product_id, &units) in &wanted {
        let available: u32 = ctx.load(&stock_key(product_id)).await?.unwrap_or(0);
        match available.checked_sub(units) {
            Some(rest) => left.push((product_id, rest)),
            None => missing.push(product_id),
        }
    }
    if !missing.is_empty() {
        return Ok(Err(StockRejected { order_id: cmd.order_id, missing }));
    }
    for (product_id, rest) in left {
        ctx.save(&stock_key(product_id), &rest).await?;
    }
    let reservation = Reservation { items: cmd.items, released: false };
    ctx.save(&reservation_key(cmd.order_id), &reservation).await?;
    Ok(Ok(StockReserved { order_id: cmd.order_id }))
}

/// Puts a reservation's units back, once.
#[handler(name = "catalog.release", scope = "catalog")]
pub async fn release_stock(cmd: ReleaseStock, ctx: &mut HandlerContext) -> Result<StockReleased, HandlerError> {
    let key = reservation_key(cmd.order_id);
    if let Some(mut reservation) = ctx.load::<Reservation>(&key).await? {
        if !reservation.released {
            for item in &reservation.items {
                let available: u32 = ctx.load(&stock_key(item.product_id)).await?.unwrap_or(0);
                ctx.save(&stock_key(item.product_id), &(available + item.units)).await?;
            }
            reservation.released = true;
            ctx.save(&key, &reservation).await?;
        }
    }
    Ok(StockReleased { order_id: cmd.order_id })
}

/// A charge as the payment service keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    pub amount_cents: u64,
}

/// Charges the buyer; cards of buyers named `declined-*` are refused.
#[handler(name = "payment.charge")]
pub async fn charge_payment(
    cmd: ChargePayment,
    ctx: &mut HandlerContext,
) -> Result<Result<PaymentSucceeded, PaymentFailed>, HandlerError> {
    if PAYMENT_OUTAGE.get().is_some_and(|(order, until)| *order == cmd.order_id && Instant::now() < *until) {
        // After its retries the command is dead-lettered; the saga's pivot then times out with
        // its outcome unknown and parks the order as failed, for an operator.
        return Err(HandlerError::transient("the card processor is unreachable"));
    }
    if cmd.buyer.starts_with("declined-") {
        return Ok(Err(PaymentFailed { order_id: cmd.order_id, reason: "card declined".into() }));
    }
    let key = format!("charge/{}", cmd.order_id);
    if ctx.load::<Charge>(&key).await?.is_none() {
        ctx.save(&key, &Charge { amount_cents: cmd.amount_cents }).await?;
    }
    Ok(Ok(PaymentSucceeded { order_id: cmd.order_id }))
}

/// Ships an order once; the carrier is busy on the first request for every fifth order.
#[handler(name = "shipping.ship")]
pub async fn ship_order(
    cmd: ShipOrder,
    ctx: &mut HandlerContext,
) -> Result<Result<OrderShipped, ShippingDelayed>, HandlerError> {
    let attempts_key = format!("attempts/{}", cmd.order_id);
    let attempts: u32 = ctx.load(&attempts_key).await?.unwrap_or(0);
    ctx.save(&attempts_key, &(attempts + 1)).await?;
    if attempts == 0 && cmd.order_id.as_u128() % 5 == 0 {
        return Ok(Err(ShippingDelayed { order_id: cmd.order_id }));
    }
    let key = format!("shipment/{}", cmd.order_id);
    if ctx.load::<u32>(&key).await?.is_none() {
        let units: u32 = cmd.items.iter().map(|i| i.units).sum();
        ctx.save(&key, &units).await?;
    }
    Ok(Ok(OrderShipped { order_id: cmd.order_id }))
}

/// Registers the saga and every participant on a runtime builder.
pub fn register(builder: sagaflow::engine::SagaRuntimeBuilder) -> sagaflow::engine::SagaRuntimeBuilder {
    builder
        .saga::<OrderSaga>()
        .handler(restock)
        .handler(reserve_stock)
        .handler(release_stock)
        .handler(charge_payment)
        .handler(ship_order)
}
