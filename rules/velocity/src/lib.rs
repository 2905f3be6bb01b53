//! Card velocity from ready-made look-back features: reviews bursts of card
//! payments and blocks a card used from too many countries. The host keeps
//! the history in event time; the rule only compares numbers.

use vigil_sdk::prelude::*;

/// Reviews card bursts in 10 minutes; blocks cards seen in many countries in an hour.
#[rule(
    name = "velocity",
    fields(card),
    features(
        count_10m = "count(card, 10m)",
        sum_10m = "sum(card, amount, 10m)",
        countries_1h = "distinct(card, geo.country, 1h)",
    ),
    params(max_count_10m: i64 = 5, max_sum_10m: i64 = 500_000, max_countries_1h: i64 = 3),
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    if tx.card().is_none() {
        return Decision::allow();
    }
    let (p, f) = (Params::of(ctx), Features::of(ctx));
    if f.countries_1h > p.max_countries_1h as f64 {
        return Decision::block(70).reason("card_many_countries_1h");
    }
    if f.count_10m > p.max_count_10m as f64 || f.sum_10m > p.max_sum_10m as f64 {
        return Decision::review(40).reason("card_velocity_10m");
    }
    Decision::allow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    const COUNT_10M: &str = Features::COUNT_10M;
    const SUM_10M: &str = Features::SUM_10M;
    const COUNTRIES_1H: &str = Features::COUNTRIES_1H;

    fn run(ctx: TestContext) -> Decision {
        let tx = PaymentBuilder::new("t").card("tok_1", Some("US"), Some(false)).build();
        evaluate(&RULE, &tx, &ctx)
    }

    #[test]
    fn quiet_cards_pass() {
        let ctx = TestContext::new().feature(COUNT_10M, 2.0).feature(SUM_10M, 1_000.0).feature(COUNTRIES_1H, 1.0);
        assert_eq!(run(ctx).action, Action::Allow);
    }

    #[test]
    fn bursts_by_count_or_amount_are_reviewed() {
        let by_count = TestContext::new().feature(COUNT_10M, 6.0).feature(COUNTRIES_1H, 1.0);
        assert_eq!(run(by_count).reasons, ["card_velocity_10m"]);
        let by_sum = TestContext::new().feature(COUNT_10M, 2.0).feature(SUM_10M, 600_000.0);
        assert_eq!(run(by_sum).action, Action::Review);
    }

    #[test]
    fn many_countries_block() {
        let ctx = TestContext::new().feature(COUNTRIES_1H, 4.0).param("max_countries_1h", 3);
        assert_eq!(run(ctx).action, Action::Block);
    }

    #[test]
    fn payments_without_a_card_are_not_judged() {
        let tx = PaymentBuilder::new("t").build();
        let ctx = TestContext::new().feature(COUNT_10M, 99.0);
        assert_eq!(evaluate(&RULE, &tx, &ctx).action, Action::Allow);
    }
}
