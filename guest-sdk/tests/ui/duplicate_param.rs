use vigil_sdk::prelude::*;

#[rule(
    name = "duplicate-param",
    params(limit: i64 = 1, limit: i64 = 2)
)]
fn evaluate(_tx: &Payment, _ctx: &Context) -> Decision {
    Decision::allow()
}

fn main() {}
