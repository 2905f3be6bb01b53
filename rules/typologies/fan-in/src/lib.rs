//! Fan-in mule: many accounts pay one account within hours, which then
//! moves the money on. Reviews transfers into an account that several
//! distinct senders paid 100.00 or more within a day, and that account's
//! payouts.

use vigil_sdk::prelude::*;

const SENDERS_TO_PAYEE_24H: &str = "distinct(counterparty, account, 24h, kind = transfer and amount >= 10000)";
const MY_SENDERS_24H: &str = "distinct_senders(account, 24h, kind = transfer and amount >= 10000)";

/// Reviews money gathered from many senders into one account.
#[rule(
    name = "fan-in",
    fields(kind, counterparty),
    features(
        "distinct(counterparty, account, 24h, kind = transfer and amount >= 10000)",
        "distinct_senders(account, 24h, kind = transfer and amount >= 10000)"
    ),
    params(senders: i64 = 3)
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let senders = ctx.param_i64("senders") as f64;
    if tx.kind() == Some(Kind::Transfer) && tx.counterparty().is_some() && ctx.feature(SENDERS_TO_PAYEE_24H) >= senders
    {
        return Decision::review(50).reason("payee_collects_from_many_senders");
    }
    let pays_out = matches!(tx.kind(), Some(Kind::Transfer | Kind::CashOut | Kind::Payout));
    if pays_out && ctx.feature(MY_SENDERS_24H) >= senders {
        return Decision::review(60).reason("collector_pays_out");
    }
    Decision::allow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    fn ctx(to_payee: f64, mine: f64) -> TestContext {
        TestContext::new().feature(SENDERS_TO_PAYEE_24H, to_payee).feature(MY_SENDERS_24H, mine)
    }

    #[test]
    fn the_third_sender_into_one_account_and_its_cash_out_are_reviewed() {
        let to_mule = PaymentBuilder::new("t").kind(Kind::Transfer).counterparty("mule", None).build();
        assert_eq!(evaluate(&RULE, &to_mule, &ctx(2.0, 0.0)).action, Action::Allow);
        assert_eq!(evaluate(&RULE, &to_mule, &ctx(3.0, 0.0)).reasons, ["payee_collects_from_many_senders"]);
        let cash_out = PaymentBuilder::new("t").kind(Kind::CashOut).build();
        assert_eq!(evaluate(&RULE, &cash_out, &ctx(0.0, 9.0)).reasons, ["collector_pays_out"]);
        assert_eq!(evaluate(&RULE, &cash_out, &ctx(0.0, 1.0)).action, Action::Allow);
    }
}
