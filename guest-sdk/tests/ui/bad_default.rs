use vigil_sdk::prelude::*;

#[rule(
    name = "bad-default",
    params(limit: i64 = "high")
)]
fn evaluate(_tx: &Payment, _ctx: &Context) -> Decision {
    Decision::allow()
}

fn main() {}
