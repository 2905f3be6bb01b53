//! Fan-out mule: one account pays many others within hours, spreading
//! money before it can be stopped. Reviews a transfer of 100.00 or more
//! once the account paid several distinct counterparties such sums within
//! a day (everyday transfers are smaller, and rarely to three payees a day).

use vigil_sdk::prelude::*;

const PAYEES_24H: &str = "distinct(account, counterparty, 24h, kind = transfer and amount >= 10000)";

/// Reviews one account paying many counterparties in a day.
#[rule(
    name = "fan-out",
    fields(kind, amount),
    features("distinct(account, counterparty, 24h, kind = transfer and amount >= 10000)"),
    params(payees: i64 = 3)
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let sizeable = tx.amount() >= 10_000;
    if tx.kind() == Some(Kind::Transfer) && sizeable && ctx.feature(PAYEES_24H) >= ctx.param_i64("payees") as f64 {
        return Decision::review(50).reason("pays_many_counterparties");
    }
    Decision::allow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    #[test]
    fn the_third_payee_in_a_day_is_reviewed() {
        let t = PaymentBuilder::new("t").kind(Kind::Transfer).amount(50_000, "USD").counterparty("c", None).build();
        assert_eq!(evaluate(&RULE, &t, &TestContext::new().feature(PAYEES_24H, 2.0)).action, Action::Allow);
        assert_eq!(
            evaluate(&RULE, &t, &TestContext::new().feature(PAYEES_24H, 3.0)).reasons,
            ["pays_many_counterparties"]
        );
        let purchase = PaymentBuilder::new("t").kind(Kind::Purchase).build();
        assert_eq!(evaluate(&RULE, &purchase, &TestContext::new().feature(PAYEES_24H, 9.0)).action, Action::Allow);
    }
}
