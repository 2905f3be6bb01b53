//! Account takeover: reviews sizeable payments from a device the account
//! did not use last time. The rule remembers each account's last device in
//! its keyed state, which the host keeps per rule, checkpoints and restores.

use vigil_sdk::prelude::*;

/// Reviews sizeable payments from a device other than the account's last one.
#[rule(name = "new-device", fields(account, device, amount), params(min_amount: i64 = 10_000))]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let Some(device) = tx.device() else {
        return Decision::allow();
    };
    let last = ctx.state_get_str(tx.account());
    if last.as_deref() != Some(device) {
        ctx.state_put(tx.account(), device.as_bytes());
    }
    match last {
        Some(last) if last != device && tx.amount() >= ctx.param_i64("min_amount") => {
            Decision::review(35).reason("new_device_for_account")
        }
        _ => Decision::allow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    fn pay(device: &str, amount: i64) -> vigil_sdk::testing::TestPayment {
        PaymentBuilder::new("t").account("acct-1").device(device).amount(amount, "USD").build()
    }

    #[test]
    fn the_first_device_is_learned_then_a_new_one_is_reviewed() {
        let ctx = TestContext::new();
        assert_eq!(evaluate(&RULE, &pay("d1", 50_000), &ctx).action, Action::Allow);
        assert_eq!(ctx.stored("acct-1").as_deref(), Some(&b"d1"[..]));
        assert_eq!(evaluate(&RULE, &pay("d1", 50_000), &ctx).action, Action::Allow);
        let d = evaluate(&RULE, &pay("d2", 50_000), &ctx);
        assert_eq!(d.reasons, ["new_device_for_account"]);
        assert_eq!(ctx.stored("acct-1").as_deref(), Some(&b"d2"[..]));
    }

    #[test]
    fn small_payments_from_a_new_device_pass() {
        let ctx = TestContext::new().state("acct-1", b"d1");
        assert_eq!(evaluate(&RULE, &pay("d2", 500), &ctx).action, Action::Allow);
    }
}
