//! The catalog, payment and shipping services as participants. Each keeps its own records
//! through the handler context, so its effects commit atomically with its inbox and replies.

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

/// Reserves stock for every line of an order, or none.
pub struct ReserveStockHandler;

#[async_trait::async_trait]
impl Handler for ReserveStockHandler {
    type Input = ReserveStock;

    fn name(&self) -> &str {
        "catalog.reserve"
    }

    fn scope(&self) -> &str {
        "catalog"
    }

    async fn handle(&self, cmd: ReserveStock, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        // Lines may name a product twice: check and take the total per product.
        let mut wanted = std::collections::BTreeMap::new();
        for item in &cmd.items {
            *wanted.entry(item.product_id).or_insert(0u32) += item.units;
        }
        let mut levels = Vec::with_capacity(wanted.len());
        let mut missing = Vec::new();
        for (&product_id, &units) in &wanted {
            let available: u32 = ctx.load(&stock_key(product_id)).await?.unwrap_or(0);
            if available < units {
                missing.push(product_id);
            }
            levels.push((product_id, available - available.min(units)));
        }
        if !missing.is_empty() {
            return ctx.reply(&StockRejected {
                order_id: cmd.order_id,
                missing,
            });
        }
        for (product_id, left) in levels {
            ctx.save(&stock_key(product_id), &left).await?;
        }
        let reservation = Reservation {
            items: cmd.items.clone(),
            released: false,
        };
        ctx.save(&reservation_key(cmd.order_id), &reservation).await?;
        ctx.reply(&StockReserved { order_id: cmd.order_id })
    }
}

/// Puts a reservation's units back, once.
pub struct ReleaseStockHandler;

#[async_trait::async_trait]
impl Handler for ReleaseStockHandler {
    type Input = ReleaseStock;

    fn name(&self) -> &str {
        "catalog.release"
    }

    fn scope(&self) -> &str {
        "catalog"
    }

    async fn handle(&self, cmd: ReleaseStock, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
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
        ctx.reply(&StockReleased { order_id: cmd.order_id })
    }
}

/// A charge as the payment service keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    pub amount_cents: u64,
}

/// Charges the buyer; cards of buyers named `declined-*` are refused.
pub struct ChargePaymentHandler;

#[async_trait::async_trait]
impl Handler for ChargePaymentHandler {
    type Input = ChargePayment;

    fn name(&self) -> &str {
        "payment.charge"
    }

    async fn handle(&self, cmd: ChargePayment, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        if cmd.buyer.starts_with("declined-") {
            return ctx.reply(&PaymentFailed {
                order_id: cmd.order_id,
                reason: "card declined".into(),
            });
        }
        let key = format!("charge/{}", cmd.order_id);
        if ctx.load::<Charge>(&key).await?.is_none() {
            ctx.save(
                &key,
                &Charge {
                    amount_cents: cmd.amount_cents,
                },
            )
            .await?;
        }
        ctx.reply(&PaymentSucceeded { order_id: cmd.order_id })
    }
}

/// Ships an order once; the carrier is busy on the first request for every fifth order.
pub struct ShipOrderHandler;

#[async_trait::async_trait]
impl Handler for ShipOrderHandler {
    type Input = ShipOrder;

    fn name(&self) -> &str {
        "shipping.ship"
    }

    async fn handle(&self, cmd: ShipOrder, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        let key = format!("shipment/{}", cmd.order_id);
        let attempts_key = format!("attempts/{}", cmd.order_id);
        let attempts: u32 = ctx.load(&attempts_key).await?.unwrap_or(0);
        ctx.save(&attempts_key, &(attempts + 1)).await?;
        if attempts == 0 && cmd.order_id.as_u128() % 5 == 0 {
            return ctx.reply(&ShippingDelayed { order_id: cmd.order_id });
        }
        if ctx.load::<u32>(&key).await?.is_none() {
            let units: u32 = cmd.items.iter().map(|i| i.units).sum();
            ctx.save(&key, &units).await?;
        }
        ctx.reply(&OrderShipped { order_id: cmd.order_id })
    }
}

/// Adds delivered goods to the stock.
pub struct RestockHandler;

#[async_trait::async_trait]
impl Handler for RestockHandler {
    type Input = StockAdded;

    fn name(&self) -> &str {
        "catalog.restock"
    }

    fn scope(&self) -> &str {
        "catalog"
    }

    async fn handle(&self, ev: StockAdded, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        let key = stock_key(ev.product_id);
        let available: u32 = ctx.load(&key).await?.unwrap_or(0);
        ctx.save(&key, &(available + ev.units)).await
    }
}

/// Registers the saga and every participant on a runtime builder.
pub fn register(builder: sagaflow::engine::SagaRuntimeBuilder) -> sagaflow::engine::SagaRuntimeBuilder {
    builder
        .saga::<OrderSaga>()
        .handler(RestockHandler)
        .handler(ReserveStockHandler)
        .handler(ReleaseStockHandler)
        .handler(ChargePaymentHandler)
        .handler(ShipOrderHandler)
}
