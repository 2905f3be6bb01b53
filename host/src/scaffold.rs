//! `vigil new-rule`: a new rule crate from the template, added to a rules
//! workspace.
//!
//! The template (`host/templates/rule/`) is a working card-testing rule with
//! native tests and a README of next steps; it compiles to wasm32 as made.
//! The workspace's `Cargo.toml` is edited with toml_edit, so its comments
//! and layout survive.

use crate::error::FileError;
use std::path::{Path, PathBuf};

const CARGO_TOML: &str = include_str!("../templates/rule/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("../templates/rule/lib.rs.tmpl");
const README: &str = include_str!("../templates/rule/README.md.tmpl");

/// Why a rule crate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// A file or folder could not be read, written, created or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The name is not a kebab-case ASCII name starting with a letter.
    #[error(
        "rule name {name:?}: use lower-case letters, digits and single hyphens, starting with a letter \
         (e.g. card-testing)"
    )]
    BadName {
        /// The name given.
        name: String,
    },
    /// The workspace's manifest could not be read.
    #[error("{} is not a rules workspace: cannot read {} (use --workspace)", workspace.display(), manifest.display())]
    NotWorkspace {
        /// The folder given as the workspace.
        workspace: PathBuf,
        /// Its `Cargo.toml`.
        manifest: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The workspace's manifest is not TOML.
    #[error("{} is not valid TOML", manifest.display())]
    Toml {
        /// The workspace's `Cargo.toml`.
        manifest: PathBuf,
        /// The parser's error.
        source: toml_edit::TomlError,
    },
    /// The manifest has no `[workspace]` table.
    #[error("{} has no [workspace] table", manifest.display())]
    NoWorkspaceTable {
        /// The workspace's `Cargo.toml`.
        manifest: PathBuf,
    },
    /// `workspace.members` is there but not an array.
    #[error("{}: workspace.members is not an array", manifest.display())]
    MembersNotArray {
        /// The workspace's `Cargo.toml`.
        manifest: PathBuf,
    },
    /// The workspace already has a member of that name.
    #[error("{} already lists {name} in workspace.members", manifest.display())]
    AlreadyListed {
        /// The workspace's `Cargo.toml`.
        manifest: PathBuf,
        /// The rule name.
        name: String,
    },
    /// The crate's folder is there already.
    #[error("{} already exists; pick another name or remove it", dir.display())]
    Exists {
        /// The crate's folder.
        dir: PathBuf,
    },
}

/// Checks a rule name: kebab-case ASCII, starting with a letter — the form
/// of a Cargo package and of `[rule.NAME]` in `vigil.toml`.
///
/// # Errors
/// Saying what is wrong with it.
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let starts = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if name.is_empty() || name.len() > 64 || !ok_chars || !starts || name.ends_with('-') || name.contains("--") {
        return Err(ScaffoldError::BadName { name: name.to_owned() });
    }
    Ok(())
}

/// Creates `workspace/name` from the template and adds it to the
/// workspace's members. Returns the crate's folder.
///
/// # Errors
/// A bad name, a workspace that is not one, or a crate folder that exists.
pub fn new_rule(workspace: &Path, name: &str) -> Result<PathBuf, ScaffoldError> {
    check_name(name)?;
    let manifest = workspace.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|source| ScaffoldError::NotWorkspace {
        workspace: workspace.to_owned(),
        manifest: manifest.clone(),
        source,
    })?;
    let mut doc: toml_edit::DocumentMut =
        text.parse().map_err(|source| ScaffoldError::Toml { manifest: manifest.clone(), source })?;
    let members = doc
        .get_mut("workspace")
        .and_then(|w| w.as_table_like_mut())
        .ok_or_else(|| ScaffoldError::NoWorkspaceTable { manifest: manifest.clone() })?
        .entry("members")
        .or_insert(toml_edit::value(toml_edit::Array::new()))
        .as_array_mut()
        .ok_or_else(|| ScaffoldError::MembersNotArray { manifest: manifest.clone() })?;
    if members.iter().any(|m| m.as_str() == Some(name)) {
        return Err(ScaffoldError::AlreadyListed { manifest, name: name.to_owned() });
    }
    let dir = workspace.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists { dir });
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
    if let Err(source) = std::fs::create_dir_all(dir.join("src")) {
        return Err(FileError { verb: "create", path: dir, source }.into());
    }
    let files = [("Cargo.toml", CARGO_TOML), ("src/lib.rs", LIB_RS), ("README.md", README)];
    for (file, template) in files {
        let path = dir.join(file);
        if let Err(source) = std::fs::write(&path, fill(template)) {
            return Err(FileError { verb: "write", path, source }.into());
        }
    }
    members.push(name);
    if let Err(source) = std::fs::write(&manifest, doc.to_string()) {
        return Err(FileError { verb: "update", path: manifest, source }.into());
    }
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
