use vigil_sdk::prelude::*;

#[rule(
    name = "typed-feature-typo",
    features(count_10m = "count(card, 10m)")
)]
fn evaluate(_tx: &Payment, ctx: &Context) -> Decision {
    if Features::of(ctx).count_1m > 3.0 { Decision::review(1) } else { Decision::allow() }
}

fn main() {}
