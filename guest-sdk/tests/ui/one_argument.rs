use vigil_sdk::prelude::*;

#[rule(
    name = "one-argument",
    fields(amount)
)]
fn evaluate(_tx: &Payment) -> Decision {
    Decision::allow()
}

fn main() {}
