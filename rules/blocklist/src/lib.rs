//! Blocks payments whose card, account, device or IP is on a blocklist.
//!
//! The lists are files the host loads and hot-reloads (`[lists.*]` in the
//! host config); card lists are tokenised at load, so the rule compares
//! tokens and never sees a PAN.

use vigil_sdk::prelude::*;

/// Blocks payments from blocklisted cards, accounts, devices or IPs.
#[rule(
    name = "blocklist",
    fields(card, account, device, ip),
    lists("blocked-cards", "blocked-accounts", "blocked-devices", "blocked-ips")
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    if tx.card().is_some_and(|card| ctx.in_list("blocked-cards", card.token)) {
        return Decision::block(100).reason("card_blocklisted");
    }
    if ctx.in_list("blocked-accounts", tx.account()) {
        return Decision::block(100).reason("account_blocklisted");
    }
    if tx.device().is_some_and(|d| ctx.in_list("blocked-devices", d)) {
        return Decision::block(100).reason("device_blocklisted");
    }
    if tx.ip().is_some_and(|ip| ctx.in_list("blocked-ips", ip)) {
        return Decision::block(100).reason("ip_blocklisted");
    }
    Decision::allow()
}

#[cfg(test)]
mod tests {
    use super::RULE;
    use vigil_sdk::Action;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    fn lists() -> TestContext {
        TestContext::new()
            .list("blocked-cards", ["tok_bad"])
            .list("blocked-accounts", ["acct-bad"])
            .list("blocked-devices", ["dev-bad"])
            .list("blocked-ips", ["203.0.113.9"])
    }

    #[test]
    fn each_list_blocks_with_its_own_reason() {
        let cases = [
            (PaymentBuilder::new("1").card("tok_bad", None, None), "card_blocklisted"),
            (PaymentBuilder::new("2").account("acct-bad"), "account_blocklisted"),
            (PaymentBuilder::new("3").device("dev-bad"), "device_blocklisted"),
            (PaymentBuilder::new("4").ip("203.0.113.9"), "ip_blocklisted"),
        ];
        for (tx, reason) in cases {
            let d = evaluate(&RULE, &tx.build(), &lists());
            assert_eq!(d.action, Action::Block);
            assert_eq!(d.reasons, [reason]);
        }
    }

    #[test]
    fn clean_payments_pass() {
        let tx = PaymentBuilder::new("5").card("tok_ok", None, None).device("dev-ok").ip("198.51.100.1").build();
        assert_eq!(evaluate(&RULE, &tx, &lists()).action, Action::Allow);
    }
}
