//! Reviews card-not-present payments made from a country other than the
//! card's issuing country — the classic sign of a stolen card number used
//! online from abroad.

use vigil_sdk::prelude::*;

/// Reviews card-not-present payments whose location differs from the card's country.
#[rule(
    name = "geo-mismatch",
    fields(card, geo, channel),
    params(score: i64 = 25, block_when_present_unknown: bool = false),
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    if tx.channel() != Some(Channel::Card) {
        return Decision::allow();
    }
    let (Some(card), Some(geo)) = (tx.card(), tx.geo()) else {
        return Decision::allow();
    };
    let (Some(issued), Some(seen)) = (card.country, geo.country) else {
        return Decision::allow();
    };
    if issued == seen {
        return Decision::allow();
    }
    let score = ctx.param_i64("score") as i32;
    match card.present {
        Some(false) => Decision::review(score).reason("card_not_present_country_mismatch"),
        None if ctx.param_bool("block_when_present_unknown") => {
            Decision::block(score).reason("country_mismatch_presence_unknown")
        }
        _ => Decision::allow(),
    }
}

#[cfg(test)]
mod tests {
    use super::RULE;
    use vigil_sdk::Action;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    fn run(present: Option<bool>, issued: &str, seen: &str, ctx: &TestContext) -> Action {
        let tx = PaymentBuilder::new("t").card("tok", Some(issued), present).geo_country(seen).build();
        evaluate(&RULE, &tx, ctx).action
    }

    #[test]
    fn card_not_present_abroad_is_reviewed() {
        assert_eq!(run(Some(false), "US", "RO", &TestContext::new()), Action::Review);
    }

    #[test]
    fn same_country_or_card_present_is_allowed() {
        let ctx = TestContext::new();
        assert_eq!(run(Some(false), "US", "US", &ctx), Action::Allow);
        assert_eq!(run(Some(true), "US", "RO", &ctx), Action::Allow);
    }

    #[test]
    fn unknown_presence_blocks_only_when_configured() {
        assert_eq!(run(None, "US", "RO", &TestContext::new()), Action::Allow);
        let strict = TestContext::new().param("block_when_present_unknown", true);
        assert_eq!(run(None, "US", "RO", &strict), Action::Block);
    }
}
