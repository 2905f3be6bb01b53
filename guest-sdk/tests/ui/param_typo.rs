use vigil_sdk::prelude::*;

#[rule(
    name = "param-typo",
    params(review_above: i64 = 100)
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    if tx.amount() > ctx.param_i64("reveiw_above") { Decision::review(1) } else { Decision::allow() }
}

fn main() {}
