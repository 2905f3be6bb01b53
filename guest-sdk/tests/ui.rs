//! The `#[rule]` attribute's compile errors, as a rule author sees them:
//! each file in `tests/ui/` must fail to build with the message beside it.
//! `TRYBUILD=overwrite cargo test -p vigil-sdk --test ui` rewrites the
//! messages after a deliberate change; review the diff.

#[test]
fn rule_mistakes_are_compile_errors_at_the_right_place() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
