//! The order saga's behaviours, written with the test harness.

#[path = "../examples/order_saga/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "../examples/order_saga/services.rs"]
#[allow(dead_code)]
mod services;

use std::time::Duration;

use domain::*;
use sagaflow::prelude::*;
use sagaflow::testing::{SagaTestHarness, Stub};
use services::*;
use uuid::Uuid;

const ORDER: Uuid = Uuid::from_u128(41); // not a multiple of five: the carrier ships at once

fn order(buyer: &str, units: u32) -> OrderSubmitted {
    let items = vec![OrderItem { product_id: 1, units }];
    OrderSubmitted { order_id: ORDER, buyer: buyer.into(), items, total_cents: 4_200 }
}

/// The real catalog and shipping services, with `stock` units of product 1 on the shelves.
/// The payment service is the test's choice: the real one or a stub.
async fn shop(payment: SagaTestHarness, stock: u32) -> sagaflow::testing::TestRuntime {
    let harness = payment.saga::<OrderSaga>().handler(restock).handler(reserve_stock).handler(release_stock);
    let h = harness.handler(ship_order).start().await;
    h.publish(&StockAdded { product_id: 1, units: stock }).await;
    h.settle().await;
    h
}

async fn shelf(h: &sagaflow::testing::TestRuntime) -> u32 {
    h.record("catalog", &stock_key(1)).await.unwrap_or(0)
}

#[tokio::test]
async fn an_order_in_stock_with_a_good_card_is_reserved_paid_and_shipped() {
    let h = shop(SagaTestHarness::new().handler(charge_payment), 10).await;
    h.publish(&order("ann", 3)).await;
    h.settle().await;

    let saga = h.expect_saga::<OrderSaga>(&ORDER.to_string()).await;
    saga.assert_status(&SagaStatus::Completed).assert_state("paid and shipped", |o| o.paid && o.shipped);
    assert_eq!(shelf(&h).await, 7);
    assert_eq!(h.sent::<ShipOrder>().len(), 1);
}

#[tokio::test]
async fn an_order_out_of_stock_is_compensated_without_charging() {
    let h = shop(SagaTestHarness::new().handler(charge_payment), 2).await;
    h.publish(&order("ann", 3)).await;
    h.settle().await;

    let saga = h.expect_saga::<OrderSaga>(&ORDER.to_string()).await;
    saga.assert_status(&SagaStatus::Compensated);
    assert_eq!(saga.failure(), Some("step reserve_stock failed: catalog.stock-rejected received"));
    assert!(h.sent::<ChargePayment>().is_empty() && h.sent::<ReleaseStock>().is_empty());
    assert_eq!(shelf(&h).await, 2);
}

#[tokio::test]
async fn a_declined_payment_releases_the_reserved_stock() {
    let h = shop(SagaTestHarness::new().handler(charge_payment), 10).await;
    h.publish(&order("declined-bob", 3)).await;
    h.settle().await;

    let saga = h.expect_saga::<OrderSaga>(&ORDER.to_string()).await;
    saga.assert_status(&SagaStatus::Compensated).assert_state("stock released", |o| !o.stock_reserved && !o.paid);
    assert_eq!(h.sent::<ReleaseStock>().len(), 1);
    assert_eq!(shelf(&h).await, 10);
}

#[tokio::test]
async fn a_payment_service_that_never_answers_is_asked_again_and_the_stock_stays_reserved() {
    // The charge is the pivot: it may have happened, so the reservation must not be released
    // around it; the charge is sent again (under the same idempotency key) until it is answered.
    let harness = SagaTestHarness::new().stub(|_: &ChargePayment| Stub::silence());
    let h = shop(harness, 10).await;
    h.publish(&order("ann", 3)).await;
    h.advance(Duration::from_secs(29)).await;
    assert_eq!(h.expect_saga::<OrderSaga>(&ORDER.to_string()).await.current_step(), Some("charge_payment"));
    assert_eq!(h.sent::<ChargePayment>().len(), 1);

    h.advance(Duration::from_secs(120)).await;
    let saga = h.expect_saga::<OrderSaga>(&ORDER.to_string()).await;
    saga.assert_status(&SagaStatus::Running { step: 1 });
    assert!(h.sent::<ChargePayment>().len() >= 3, "the charge is asked again: {}", h.sent::<ChargePayment>().len());
    assert!(h.sent::<ReleaseStock>().is_empty(), "nothing is compensated around a pivot that may have happened");
    assert_eq!(shelf(&h).await, 7, "the stock stays reserved");
}

#[tokio::test]
async fn every_message_delivered_twice_still_charges_and_reserves_once() {
    let h = shop(SagaTestHarness::new().handler(charge_payment).duplicate_deliveries(), 10).await;
    h.publish(&order("ann", 3)).await;
    h.settle().await;

    h.expect_saga::<OrderSaga>(&ORDER.to_string()).await.assert_status(&SagaStatus::Completed);
    assert_eq!(shelf(&h).await, 7, "stock reserved once");
    assert!(h.record::<Charge>("payment.charge", &format!("charge/{ORDER}")).await.is_some());
    assert_eq!(h.record::<u32>("shipping.ship", &format!("attempts/{ORDER}")).await, Some(1), "shipped once");
}

#[tokio::test]
async fn a_restart_while_waiting_for_the_payment_loses_nothing() {
    let harness = SagaTestHarness::with_sled().unwrap();
    let harness = harness
        .stub(|c: &ChargePayment| Stub::delayed(Duration::from_secs(5), PaymentSucceeded { order_id: c.order_id }));
    let mut h = shop(harness, 10).await;
    h.publish(&order("ann", 3)).await;
    h.settle().await;

    h.restart().await;
    h.advance(Duration::from_secs(6)).await;
    h.expect_saga::<OrderSaga>(&ORDER.to_string()).await.assert_status(&SagaStatus::Completed);
    assert_eq!(shelf(&h).await, 7);
}
