//! Rapid movement of funds: money comes in and goes straight out again.
//! Reviews a large cash deposit, and money sent or cashed out within a day
//! of coming in once it moves a fifth or more of what came in — one
//! comparison of the party's flows, `sum_out` against `sum_in`.

use vigil_sdk::prelude::*;

const IN_24H: &str = "sum_in(account, amount, 24h)";
const OUT_24H: &str = "sum_out(account, amount, 24h)";

/// Reviews large deposits and money moved out soon after it came in.
#[rule(
    name = "rapid-movement",
    fields(amount, kind),
    features("sum_in(account, amount, 24h)", "sum_out(account, amount, 24h)"),
    params(large_deposit: i64 = 500_000, min_moved: i64 = 100_000, moved_share: f64 = 0.2)
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    match tx.kind() {
        Some(Kind::CashIn) if tx.amount() >= ctx.param_i64("large_deposit") => {
            Decision::review(25).reason("large_cash_deposit")
        }
        Some(Kind::Transfer | Kind::CashOut | Kind::Payout) => {
            // Deposited in cash or received, against sent or cashed out.
            let came_in = ctx.feature(IN_24H);
            let went_out = ctx.feature(OUT_24H);
            let moved =
                came_in >= ctx.param_i64("min_moved") as f64 && went_out >= ctx.param_f64("moved_share") * came_in;
            if moved { Decision::review(60).reason("funds_moved_out_within_a_day") } else { Decision::allow() }
        }
        _ => Decision::allow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    fn pay(kind: Kind, amount: i64) -> vigil_sdk::testing::TestPayment {
        PaymentBuilder::new("t").kind(kind).amount(amount, "EUR").build()
    }

    #[test]
    fn a_large_deposit_and_money_moved_out_after_it_are_reviewed() {
        let ctx = TestContext::new().feature(IN_24H, 0.0).feature(OUT_24H, 0.0);
        assert_eq!(evaluate(&RULE, &pay(Kind::CashIn, 900_000), &ctx).reasons, ["large_cash_deposit"]);
        let moved = TestContext::new().feature(IN_24H, 900_000.0).feature(OUT_24H, 500_000.0);
        assert_eq!(evaluate(&RULE, &pay(Kind::CashOut, 500_000), &moved).reasons, ["funds_moved_out_within_a_day"]);
    }

    #[test]
    fn spending_what_one_earns_over_time_passes() {
        let ctx = TestContext::new().feature(IN_24H, 300_000.0).feature(OUT_24H, 20_000.0);
        assert_eq!(evaluate(&RULE, &pay(Kind::Transfer, 20_000), &ctx).action, Action::Allow);
        assert_eq!(evaluate(&RULE, &pay(Kind::CashIn, 40_000), &ctx).action, Action::Allow);
    }
}
