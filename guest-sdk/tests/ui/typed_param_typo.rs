use vigil_sdk::prelude::*;

#[rule(
    name = "typed-param-typo",
    params(max_count: i64 = 5)
)]
fn evaluate(_tx: &Payment, ctx: &Context) -> Decision {
    if Params::of(ctx).max_cont > 3 { Decision::review(1) } else { Decision::allow() }
}

fn main() {}
