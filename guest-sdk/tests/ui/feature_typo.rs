use vigil_sdk::prelude::*;

#[rule(
    name = "feature-typo",
    features("count(card, 10m)")
)]
fn evaluate(_tx: &Payment, ctx: &Context) -> Decision {
    if ctx.feature("count(card, 1m)") > 3.0 { Decision::review(1) } else { Decision::allow() }
}

fn main() {}
