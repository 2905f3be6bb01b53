//! `vigil new-rule`: a new rule crate from the template, added to a rules
//! workspace.
//!
//! The template (`host/templates/rule/`) is a working card-testing rule with
//! native tests and a README of next steps; it compiles to wasm32 as made.
//! The workspace's `Cargo.toml` is edited with toml_edit, so its comments
//! and layout survive.

use anyhow::Context as _;
use std::path::{Path, PathBuf};

const CARGO_TOML: &str = include_str!("../templates/rule/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("../templates/rule/lib.rs.tmpl");
const README: &str = include_str!("../templates/rule/README.md.tmpl");

/// Checks a rule name: kebab-case ASCII, starting with a letter — the form
/// of a Cargo package and of `[rule.NAME]` in `vigil.toml`.
///
/// # Errors
/// Saying what is wrong with it.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let starts = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if name.is_empty() || name.len() > 64 || !ok_chars || !starts || name.ends_with('-') || name.contains("--") {
        anyhow::bail!(
            "rule name {name:?}: use lower-case letters, digits and single hyphens, starting with a letter \
             (e.g. card-testing)"
        );
    }
    Ok(())
}

/// Creates `workspace/name` from the template and adds it to the
/// workspace's members. Returns the crate's folder.
///
/// # Errors
/// A bad name, a workspace that is not one, or a crate folder that exists.
pub fn new_rule(workspace: &Path, name: &str) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let manifest = workspace.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "{} is not a rules workspace: cannot read {} (use --workspace)",
            workspace.display(),
            manifest.display()
        )
    })?;
    let mut doc: toml_edit::DocumentMut =
        text.parse().with_context(|| format!("{} is not valid TOML", manifest.display()))?;
    let members = doc
        .get_mut("workspace")
        .and_then(|w| w.as_table_like_mut())
        .with_context(|| format!("{} has no [workspace] table", manifest.display()))?
        .entry("members")
        .or_insert(toml_edit::value(toml_edit::Array::new()))
        .as_array_mut()
        .with_context(|| format!("{}: workspace.members is not an array", manifest.display()))?;
    if members.iter().any(|m| m.as_str() == Some(name)) {
        anyhow::bail!("{} already lists {name} in workspace.members", manifest.display());
    }
    let dir = workspace.join(name);
    if dir.exists() {
        anyhow::bail!("{} already exists; pick another name or remove it", dir.display());
    }
    let crate_name = name.replace('-', "_");
    let wasm = workspace.join("target/wasm32-unknown-unknown/release").join(format!("{crate_name}.wasm"));
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{reason}}", &crate_name)
            .replace("{{wasm}}", &wasm.display().to_string())
    };
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = [("Cargo.toml", CARGO_TOML), ("src/lib.rs", LIB_RS), ("README.md", README)];
    for (file, template) in files {
        let path = dir.join(file);
        std::fs::write(&path, fill(template)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    members.push(name);
    std::fs::write(&manifest, doc.to_string()).with_context(|| format!("cannot update {}", manifest.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_kebab_case() {
        for ok in ["card-testing", "a", "rule2", "x-1-y"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Card", "1rule", "a_b", "a--b", "a-", "a b", "ä"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_crate_is_added_and_the_workspace_keeps_its_comments() {
        let dir = tempfile::tempdir().expect("should succeed");
        let manifest = dir.path().join("Cargo.toml");
        std::fs::write(&manifest, "# my rules\n[workspace]\nmembers = [\"old\"]\n").expect("should succeed");
        let made = new_rule(dir.path(), "card-testing").expect("should succeed");
        let text = std::fs::read_to_string(&manifest).expect("should succeed");
        assert!(text.starts_with("# my rules\n"), "{text}");
        assert!(text.contains(r#"members = ["old", "card-testing"]"#), "{text}");
        let lib = std::fs::read_to_string(made.join("src/lib.rs")).expect("should succeed");
        assert!(lib.contains(r#"name = "card-testing""#) && lib.contains(r#"reason("card_testing")"#));
        assert!(!lib.contains("{{"), "every placeholder is filled");
        let e = new_rule(dir.path(), "card-testing").expect_err("should fail").to_string();
        assert!(e.contains("already lists card-testing"), "{e}");
        let e = new_rule(&dir.path().join("nowhere"), "x").expect_err("should fail").to_string();
        assert!(e.contains("is not a rules workspace"), "{e}");
    }
}
