//! Account takeover: someone else gets into an account, from their own
//! device and country, and moves money out. The rule learns each account's
//! usual device and country in its keyed state (`state = account`) and
//! reviews payments from a device *and* a country it has not seen, blocking
//! large transfers and cash-outs among them.

use vigil_sdk::prelude::*;

const DEVICE: &str = "device";
const COUNTRY: &str = "country";

/// Reviews payments from a new device in a new country; blocks money moved out from them.
#[rule(
    name = "account-takeover",
    fields(kind, amount, device, geo),
    params(large: i64 = 100_000),
    state = account
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let (Some(device), Some(country)) = (tx.device(), tx.geo().and_then(|g| g.country)) else {
        return Decision::allow();
    };
    let known_device = ctx.state_get_str(DEVICE);
    let known_country = ctx.state_get_str(COUNTRY);
    let (Some(known_device), Some(known_country)) = (known_device, known_country) else {
        // First sight of the account: learn it.
        ctx.state_put(DEVICE, device.as_bytes());
        ctx.state_put(COUNTRY, country.as_str().as_bytes());
        return Decision::allow();
    };
    if known_device == device || known_country == country.as_str() {
        return Decision::allow();
    }
    // Not learned: the intruder's device must not become the usual one.
    let moves_out = matches!(tx.kind(), Some(Kind::Transfer | Kind::CashOut | Kind::Payout));
    if moves_out && tx.amount() >= ctx.param_i64("large") {
        return Decision::block(90).reason("new_device_and_country_moves_money");
    }
    Decision::review(40).reason("new_device_and_country")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    fn pay(device: &str, country: &str, kind: Kind, amount: i64) -> vigil_sdk::testing::TestPayment {
        PaymentBuilder::new("t").device(device).geo_country(country).kind(kind).amount(amount, "USD").build()
    }

    #[test]
    fn the_usual_device_and_country_are_learned_then_a_stranger_is_stopped() {
        let ctx = TestContext::new();
        assert_eq!(evaluate(&RULE, &pay("d1", "US", Kind::Purchase, 3_000), &ctx).action, Action::Allow);
        assert_eq!(evaluate(&RULE, &pay("d1", "FR", Kind::Purchase, 3_000), &ctx).action, Action::Allow, "travel");
        assert_eq!(evaluate(&RULE, &pay("d2", "US", Kind::Purchase, 3_000), &ctx).action, Action::Allow, "new phone");
        let probe = evaluate(&RULE, &pay("evil", "BR", Kind::Purchase, 100), &ctx);
        assert_eq!(probe.reasons, ["new_device_and_country"]);
        let theft = evaluate(&RULE, &pay("evil", "BR", Kind::Transfer, 500_000), &ctx);
        assert_eq!(theft.action, Action::Block);
        assert_eq!(theft.reasons, ["new_device_and_country_moves_money"]);
        assert_eq!(ctx.stored(DEVICE).as_deref(), Some(&b"d1"[..]), "the intruder's device is not learned");
    }
}
