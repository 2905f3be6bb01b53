//! Reviews payments above one limit and blocks them above another.
//!
//! Limits are in minor units of the payment's currency and are set per
//! deployment in the host config (`[rule.large-amount.params]`).

use vigil_sdk::prelude::*;

/// Reviews or blocks payments whose amount is above a configured limit.
#[rule(
    name = "large-amount",
    fields(amount, currency),
    params(review_above: i64 = 100_000, block_above: i64 = 1_000_000),
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let amount = tx.amount();
    if amount > ctx.param_i64("block_above") {
        Decision::block(80).reason("amount_over_block_limit")
    } else if amount > ctx.param_i64("review_above") {
        Decision::review(30).reason("amount_over_review_limit")
    } else {
        Decision::allow()
    }
}

#[cfg(test)]
mod tests {
    use super::RULE;
    use vigil_sdk::Action;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    fn action(amount: i64, ctx: &TestContext) -> Action {
        let tx = PaymentBuilder::new("t").amount(amount, "USD").build();
        evaluate(&RULE, &tx, ctx).action
    }

    #[test]
    fn limits_are_exclusive_and_ordered() {
        let ctx = TestContext::new();
        assert_eq!(action(100_000, &ctx), Action::Allow);
        assert_eq!(action(100_001, &ctx), Action::Review);
        assert_eq!(action(1_000_000, &ctx), Action::Review);
        assert_eq!(action(1_000_001, &ctx), Action::Block);
    }

    #[test]
    fn limits_come_from_parameters() {
        let ctx = TestContext::new().param("review_above", 10).param("block_above", 20);
        assert_eq!(action(15, &ctx), Action::Review);
        assert_eq!(action(21, &ctx), Action::Block);
    }

    #[test]
    fn reasons_say_which_limit() {
        let tx = PaymentBuilder::new("t").amount(2_000_000, "USD").build();
        let d = evaluate(&RULE, &tx, &TestContext::new());
        assert_eq!(d.reasons, ["amount_over_block_limit"]);
    }
}
