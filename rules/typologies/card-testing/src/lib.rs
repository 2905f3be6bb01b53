//! Card testing: a fraudster checks stolen card numbers with many tiny
//! card-not-present payments. Reviews a small card-not-present payment when
//! the card made another within ten minutes, or when it is made from
//! another country than the card's.

use vigil_sdk::prelude::*;

const SMALL_CNP_10M: &str = "count(card, 10m, amount < 1000 and card.present = false)";

/// Reviews bursts of small card-not-present payments on one card.
#[rule(
    name = "card-testing",
    fields(amount, card, geo),
    features("count(card, 10m, amount < 1000 and card.present = false)"),
    params(small_below: i64 = 1_000, burst: i64 = 2)
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let Some(card) = tx.card() else {
        return Decision::allow();
    };
    if tx.amount() >= ctx.param_i64("small_below") || card.present != Some(false) {
        return Decision::allow();
    }
    if ctx.feature(SMALL_CNP_10M) >= ctx.param_i64("burst") as f64 {
        return Decision::review(60).reason("card_testing_burst");
    }
    let abroad = matches!((card.country, tx.geo().and_then(|g| g.country)), (Some(c), Some(g)) if c != g);
    if abroad {
        return Decision::review(30).reason("small_card_not_present_abroad");
    }
    Decision::allow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    fn small(geo: &str, present: bool) -> vigil_sdk::testing::TestPayment {
        PaymentBuilder::new("t").amount(300, "USD").card("tok_1", Some("US"), Some(present)).geo_country(geo).build()
    }

    #[test]
    fn a_second_small_card_not_present_payment_in_ten_minutes_is_reviewed() {
        let once = TestContext::new().feature(SMALL_CNP_10M, 1.0);
        assert_eq!(evaluate(&RULE, &small("US", false), &once).action, Action::Allow);
        let twice = TestContext::new().feature(SMALL_CNP_10M, 2.0);
        assert_eq!(evaluate(&RULE, &small("US", false), &twice).reasons, ["card_testing_burst"]);
    }

    #[test]
    fn a_small_payment_abroad_is_reviewed_at_once_but_not_a_present_card() {
        let ctx = TestContext::new().feature(SMALL_CNP_10M, 1.0);
        assert_eq!(evaluate(&RULE, &small("BR", false), &ctx).reasons, ["small_card_not_present_abroad"]);
        assert_eq!(evaluate(&RULE, &small("BR", true), &ctx).action, Action::Allow);
        let big = PaymentBuilder::new("t").amount(50_000, "USD").card("tok_1", Some("US"), Some(false)).build();
        assert_eq!(evaluate(&RULE, &big, &TestContext::new().feature(SMALL_CNP_10M, 9.0)).action, Action::Allow);
    }
}
