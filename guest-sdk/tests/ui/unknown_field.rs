use vigil_sdk::prelude::*;

#[rule(
    name = "unknown-field",
    fields(amout)
)]
fn evaluate(_tx: &Payment, _ctx: &Context) -> Decision {
    Decision::allow()
}

fn main() {}
