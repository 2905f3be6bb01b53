//! `spend-spike`: reviews a sizeable payment on a card whose spending over
//! the last six hours is well above normal — the shape of a stolen card
//! being emptied. Made with `vigil new-rule spend-spike`; on the bundled
//! card-transaction sample it finds most of the labelled fraud (see
//! docs/rule-authoring.md for the backtest).

use vigil_sdk::prelude::*;

/// Reviews payments above `min_amount` on a card that spent over `max_spend_6h` in six hours.
#[rule(
    name = "spend-spike",
    version = "1.0.0",
    fields(amount, card),
    // Card spend in the last six hours, this payment included, minor units.
    features(spend_6h = "sum(card, amount, 6h)"),
    params(min_amount: i64 = 30_000, max_spend_6h: i64 = 100_000),
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let (p, f) = (Params::of(ctx), Features::of(ctx));
    if tx.card().is_some() && tx.amount() > p.min_amount && f.spend_6h > p.max_spend_6h as f64 {
        return Decision::review(50).reason("card_spend_spike_6h");
    }
    Decision::allow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    const SPEND_6H: &str = Features::SPEND_6H;

    fn payment(amount: i64) -> vigil_sdk::testing::TestPayment {
        PaymentBuilder::new("t1").amount(amount, "USD").card("tok_1", Some("US"), Some(false)).build()
    }

    #[test]
    fn a_sizeable_payment_on_a_busy_card_is_reviewed() {
        let d = evaluate(&RULE, &payment(95_000), &TestContext::new().feature(SPEND_6H, 180_000.0));
        assert_eq!(d.action, Action::Review);
        assert_eq!(d.reasons, ["card_spend_spike_6h"]);
    }

    #[test]
    fn small_payments_and_quiet_cards_pass() {
        let busy = TestContext::new().feature(SPEND_6H, 180_000.0);
        assert_eq!(evaluate(&RULE, &payment(2_000), &busy).action, Action::Allow);
        let quiet = TestContext::new().feature(SPEND_6H, 95_000.0);
        assert_eq!(evaluate(&RULE, &payment(95_000), &quiet).action, Action::Allow);
    }

    #[test]
    fn the_limits_are_parameters() {
        let ctx = TestContext::new().feature(SPEND_6H, 60_000.0).param("max_spend_6h", 50_000);
        assert_eq!(evaluate(&RULE, &payment(40_000), &ctx).action, Action::Review);
    }

    #[test]
    fn payments_without_a_card_are_not_judged() {
        let tx = PaymentBuilder::new("t1").amount(95_000, "USD").build();
        assert_eq!(evaluate(&RULE, &tx, &TestContext::new().feature(SPEND_6H, 1e9)).action, Action::Allow);
    }
}
