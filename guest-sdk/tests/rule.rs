//! The `#[rule]` attribute as a rule author meets it: typed parameters and
//! features, and what reading an undeclared field does.

use vigil_sdk::prelude::*;
use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

mod typed {
    use vigil_sdk::prelude::*;

    /// Reviews bursts on a card and blocks a named merchant.
    #[rule(
        name = "typed",
        fields(amount, card, merchant),
        features(count_10m = "count(card, 10m)", "sum(card, amount, 10m)"),
        params(max_count: i64 = 5, share: f64 = 0.5, strict: bool = false, merchant: str = "m-bad"),
    )]
    fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
        let (p, f) = (Params::of(ctx), Features::of(ctx));
        if tx.merchant().is_some_and(|m| m.id == p.merchant) {
            return Decision::block(90).reason("merchant");
        }
        let limit = if p.strict { p.max_count as f64 * p.share } else { p.max_count as f64 };
        if f.count_10m > limit && ctx.feature("sum(card, amount, 10m)") > 0.0 {
            return Decision::review(40).reason("burst");
        }
        Decision::allow()
    }
}

mod careless {
    use vigil_sdk::prelude::*;

    /// Reads the event time without declaring `ts`.
    #[rule(name = "careless", fields(amount))]
    fn evaluate(tx: &Payment, _ctx: &Context) -> Decision {
        if tx.ts_ms() % 2 == 0 { Decision::review(1) } else { Decision::allow() }
    }
}

#[test]
fn generated_params_and_features_read_the_values_of_the_call() {
    let tx = PaymentBuilder::new("t").amount(1_000, "USD").card("tok_1", Some("US"), Some(true)).build();
    let burst = || TestContext::new().feature("count(card, 10m)", 4.0).feature("sum(card, amount, 10m)", 9.0);
    assert_eq!(evaluate(&typed::RULE, &tx, &burst()).action, Action::Allow, "4 is within max_count 5");
    let strict = burst().param("strict", true);
    assert_eq!(evaluate(&typed::RULE, &tx, &strict).reasons, ["burst"], "strict: 4 > 5 × 0.5");
    let lower = burst().param("max_count", 3);
    assert_eq!(evaluate(&typed::RULE, &tx, &lower).action, Action::Review);
    let paid = PaymentBuilder::new("t").amount(1_000, "USD").merchant("m-7", Some(5999), Some("US")).build();
    let named = TestContext::new().param("merchant", "m-7");
    assert_eq!(evaluate(&typed::RULE, &paid, &named).reasons, ["merchant"]);
    assert_eq!(typed::RULE.manifest.features, ["count(card, 10m)", "sum(card, amount, 10m)"]);
}

#[test]
fn reading_an_undeclared_field_fails_the_test_saying_what_to_declare() {
    let tx = PaymentBuilder::new("t").amount(1_000, "USD").build();
    let panic = std::panic::catch_unwind(|| evaluate(&careless::RULE, &tx, &TestContext::new()))
        .expect_err("reading `ts` undeclared");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("`ts`") && message.contains("fields(...)"), "{message}");
    // Declared fields read as usual.
    assert_eq!(tx.payment().amount(), 1_000);
}
