//! Structuring: transfers kept just under a reporting threshold, often
//! several in a day. Reviews a transfer just under the threshold, and more
//! firmly the second within a day.

use vigil_sdk::prelude::*;

const NEAR_24H: &str = "count(account, 24h, kind = transfer and amount >= 900000 and amount < 1000000)";

/// Reviews transfers just under the reporting threshold.
#[rule(
    name = "structuring",
    fields(amount, kind),
    features("count(account, 24h, kind = transfer and amount >= 900000 and amount < 1000000)"),
    params(threshold: i64 = 1_000_000, margin: i64 = 100_000)
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let threshold = ctx.param_i64("threshold");
    let near = tx.kind() == Some(Kind::Transfer)
        && tx.amount() < threshold
        && tx.amount() >= threshold - ctx.param_i64("margin");
    if !near {
        return Decision::allow();
    }
    if ctx.feature(NEAR_24H) >= 2.0 {
        return Decision::review(60).reason("structuring_repeated_near_threshold");
    }
    Decision::review(20).reason("transfer_just_under_threshold")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    fn transfer(amount: i64) -> vigil_sdk::testing::TestPayment {
        PaymentBuilder::new("t").kind(Kind::Transfer).amount(amount, "USD").build()
    }

    #[test]
    fn transfers_just_under_the_threshold_are_reviewed_more_firmly_when_repeated() {
        let first = TestContext::new().feature(NEAR_24H, 1.0);
        assert_eq!(evaluate(&RULE, &transfer(950_000), &first).reasons, ["transfer_just_under_threshold"]);
        let again = TestContext::new().feature(NEAR_24H, 3.0);
        assert_eq!(evaluate(&RULE, &transfer(990_000), &again).reasons, ["structuring_repeated_near_threshold"]);
    }

    #[test]
    fn other_amounts_and_kinds_pass() {
        let ctx = TestContext::new().feature(NEAR_24H, 3.0);
        assert_eq!(evaluate(&RULE, &transfer(1_000_000), &ctx).action, Action::Allow);
        assert_eq!(evaluate(&RULE, &transfer(850_000), &ctx).action, Action::Allow);
        let purchase = PaymentBuilder::new("t").kind(Kind::Purchase).amount(950_000, "USD").build();
        assert_eq!(evaluate(&RULE, &purchase, &ctx).action, Action::Allow);
    }
}
