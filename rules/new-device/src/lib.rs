//! Account takeover: reviews sizeable payments from a device the account
//! did not use last time. The rule remembers each account's last device in
//! its keyed state (`state = account`: the host keeps it with the account,
//! whichever worker or daemon decides the payment), checkpoints and
//! restores it.

use vigil_sdk::prelude::*;

/// The state key of the account's last device.
const LAST_DEVICE: &str = "last-device";

/// Reviews sizeable payments from a device other than the account's last one.
#[rule(name = "new-device", fields(device, amount), params(min_amount: i64 = 10_000), state = account)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let Some(device) = tx.device() else {
        return Decision::allow();
    };
    let last = ctx.state_get_str(LAST_DEVICE);
    if last.as_deref() != Some(device) {
        ctx.state_put(LAST_DEVICE, device.as_bytes());
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
        assert_eq!(ctx.stored(LAST_DEVICE).as_deref(), Some(&b"d1"[..]));
        assert_eq!(evaluate(&RULE, &pay("d1", 50_000), &ctx).action, Action::Allow);
        let d = evaluate(&RULE, &pay("d2", 50_000), &ctx);
        assert_eq!(d.reasons, ["new_device_for_account"]);
        assert_eq!(ctx.stored(LAST_DEVICE).as_deref(), Some(&b"d2"[..]));
    }

    #[test]
    fn small_payments_from_a_new_device_pass() {
        let ctx = TestContext::new().state(LAST_DEVICE, b"d1");
        assert_eq!(evaluate(&RULE, &pay("d2", 500), &ctx).action, Action::Allow);
    }
}
