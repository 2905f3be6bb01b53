use vigil_sdk::prelude::*;

#[rule(
    name = "param-wrong-type",
    params(limit: i64 = 100)
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    if tx.amount() as f64 > ctx.param_f64("limit") { Decision::review(1) } else { Decision::allow() }
}

fn main() {}
