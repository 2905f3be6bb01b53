use vigil_sdk::prelude::*;

#[rule(
    name = "list-typo",
    lists("blocked-cards")
)]
fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
    if ctx.in_list("blocked_cards", tx.account()) { Decision::block(1) } else { Decision::allow() }
}

fn main() {}
