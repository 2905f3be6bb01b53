//! A rule that misbehaves on purpose, for testing vigil's sandbox.
//!
//! With the default parameters it allows everything. Set `behaviour` in the
//! host config to make it loop forever, grow memory without bound, recurse
//! until the stack overflows, panic, log a line on every event, or burn a
//! given number of iterations;
//! set `only_attr` to misbehave only on events carrying that attribute.
//! Never deploy it with `behaviour` set outside a test.

use vigil_sdk::prelude::*;

/// Misbehaves on purpose when told to; allows everything otherwise.
#[rule(
    name = "chaos",
    fields(attrs, amount),
    params(behaviour: str = "none", only_attr: str = "", spin: i64 = 0),
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    let only = ctx.param_str("only_attr");
    if !only.is_empty() && tx.attr(only).is_none() {
        return Decision::allow();
    }
    match ctx.param_str("behaviour") {
        "loop" => loop {
            std::hint::black_box(tx.amount());
        },
        "grow" => {
            // Reserve without filling: memory grows, fuel barely moves.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = Vec::with_capacity(1 << 20);
                block.push(1u8);
                hoard.push(std::hint::black_box(block));
            }
        }
        "recurse" => Decision::allow().score(recurse(tx.amount() as u64) as i32),
        "panic" => panic!("chaos rule told to panic"),
        "log" => {
            ctx.log(Level::Warn, &format!("chaos rule logging for an amount of {}", tx.amount()));
            Decision::allow()
        }
        "spin" => {
            let mut x = tx.amount() as u64;
            for _ in 0..ctx.param_i64("spin") {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            Decision::allow().score((x & 1) as i32)
        }
        _ => Decision::allow(),
    }
}

// Unbounded on purpose: this is the stack-overflow case.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 16]);
    recurse(n.wrapping_add(1)).wrapping_add(pad[3])
}

#[cfg(test)]
mod tests {
    use super::RULE;
    use vigil_sdk::Action;
    use vigil_sdk::testing::{PaymentBuilder, TestContext, evaluate};

    #[test]
    fn harmless_by_default() {
        let tx = PaymentBuilder::new("t").build();
        assert_eq!(evaluate(&RULE, &tx, &TestContext::new()).action, Action::Allow);
    }

    #[test]
    fn only_attr_limits_the_damage() {
        let ctx = TestContext::new().param("behaviour", "panic").param("only_attr", "chaos");
        let calm = PaymentBuilder::new("t").build();
        assert_eq!(evaluate(&RULE, &calm, &ctx).action, Action::Allow);
        let wild = PaymentBuilder::new("t").attr("chaos", "1").build();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluate(&RULE, &wild, &ctx)));
        assert!(panicked.is_err());
    }

    #[test]
    fn spin_is_bounded_work() {
        let ctx = TestContext::new().param("behaviour", "spin").param("spin", 1000);
        let tx = PaymentBuilder::new("t").build();
        assert_eq!(evaluate(&RULE, &tx, &ctx).action, Action::Allow);
    }
}
