use vigil_sdk::prelude::*;

#[rule(
    name = "unknown-state",
    state = wallet
)]
fn evaluate(_tx: &Payment, _ctx: &Context) -> Decision {
    Decision::allow()
}

fn main() {}
