//! The workload both order examples run, and the summary they print.

use uuid::Uuid;

use super::domain::{OrderItem, OrderSubmitted};

pub const PRODUCTS: u32 = 20;
pub const UNITS_PER_PRODUCT: u32 = 80;

/// The n-th order: 1 to 3 lines, a declined card for every tenth buyer.
pub fn order(n: u32) -> OrderSubmitted {
    let mix = n.wrapping_mul(2_654_435_761);
    let items = (0..1 + mix % 3)
        .map(|i| OrderItem { product_id: 1 + (mix >> (4 + i * 5)) % PRODUCTS, units: 1 + (mix >> (9 + i * 3)) % 5 })
        .collect();
    let buyer = if n % 10 == 7 { format!("declined-{n}") } else { format!("buyer-{n}") };
    OrderSubmitted {
        order_id: Uuid::from_u128(0x0_5a6a_0000_0000_0000_0000_0000_0000 + u128::from(n)),
        buyer,
        items,
        total_cents: u64::from(1_000 + mix % 9_000),
    }
}

/// What the stores say after a run.
#[derive(Debug, Default)]
pub struct Books {
    pub completed: usize,
    pub compensated: usize,
    /// Why orders were compensated, for the summary line.
    pub compensated_detail: String,
    pub failed: usize,
    pub open: usize,
    pub on_shelves: u64,
    pub reserved: u64,
    pub charges: usize,
    pub shipments: usize,
}

impl Books {
    /// Prints the summary; returns whether every order is terminal and the books balance.
    pub fn print(&self, orders: u32) -> bool {
        let delivered = u64::from(PRODUCTS * UNITS_PER_PRODUCT);
        let mark = |ok: bool| if ok { "ok" } else { "MISMATCH" };
        let stock_ok = self.on_shelves + self.reserved == delivered;
        let (pay_ok, ship_ok) = (self.charges == self.completed, self.shipments == self.completed);
        let all_done = self.open == 0 && self.completed + self.compensated + self.failed == orders as usize;
        println!("  completed     {:>6}", self.completed);
        println!("  compensated   {:>6}{}", self.compensated, self.compensated_detail);
        println!("  failed        {:>6}", self.failed);
        println!("  still running {:>6}", self.open);
        println!(
            "  stock         {delivered} delivered = {} on shelves + {} reserved for completed and failed orders: {}",
            self.on_shelves,
            self.reserved,
            mark(stock_ok)
        );
        println!("  payments      {} charges for {} completed orders: {}", self.charges, self.completed, mark(pay_ok));
        println!(
            "  shipments     {} shipments for {} completed orders: {}",
            self.shipments,
            self.completed,
            mark(ship_ok)
        );
        all_done && stock_ok && pay_ok && ship_ok
    }
}
