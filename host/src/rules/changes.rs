//! The rule change log (`state/rule-changes.jsonl`) and the archive of every
//! module that was live (`state/rule-archive/`).
//!
//! Every load, replacement, refusal, unload, quarantine, release, mode
//! change and list change is appended as one JSON line, flushed to disk
//! before the change is reported done. Each line carries the SHA-256 of
//! the line before it (`prev`), so a line changed, inserted or removed
//! breaks the chain at that point; and the head of the chain (its length
//! and last line's hash) is signed with the daemon's own Ed25519 key in
//! `rule-changes.head`, so a log cut short or rewritten no longer matches
//! the head. `vigil audit verify` checks both; an operator who keeps the
//! daemon's public key (`vigil audit verify` prints it) can pin it with
//! `--public-key`. What this cannot stop: someone who can read the
//! daemon's key (it is in the state folder) can sign a rewritten log, and
//! someone who kept an older head file can cut the log back to it. Keep
//! the heads `verify` prints somewhere else to compare.

use crate::error::FileError;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the change log cannot be kept, read, verified or rolled back from.
#[derive(Debug, thiserror::Error)]
pub enum ChangeLogError {
    /// A file or folder could not be read, written, created or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The daemon's key could not be read, made or written.
    #[error(transparent)]
    Key(Box<crate::rules::signing::SigningError>),
    /// A line of the log is not an entry.
    #[error("{} line {line}", path.display())]
    Line {
        /// The log.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// An entry does not parse: the log was altered there.
    #[error("entry {entry} (line {entry}) is not a change record; the log was altered there")]
    NotRecord {
        /// The entry, from 1.
        entry: u64,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// The first entry does not chain to the start.
    #[error("entry 1 does not start the chain: the log was altered at its start")]
    BadStart,
    /// An entry does not chain to the one before it.
    #[error("entry {entry} (line {entry}) was altered or removed: entry {next} does not chain to it")]
    Altered {
        /// The entry altered or removed.
        entry: u64,
        /// The entry after it.
        next: u64,
    },
    /// An entry carries another sequence number than its place.
    #[error("entry {entry} (line {entry}) carries seq {seq}: entries were removed or reordered")]
    Seq {
        /// The entry, from 1.
        entry: u64,
        /// The number it carries.
        seq: u64,
    },
    /// The head file does not parse.
    #[error("{} is not a signed head", path.display())]
    NotHead {
        /// The head file.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// The head names no usable public key.
    #[error("{}", path.display())]
    HeadKey {
        /// The head file.
        path: PathBuf,
        /// What is wrong with its key.
        source: Box<crate::rules::signing::SigningError>,
    },
    /// The key given to pin is not one.
    #[error("--public-key")]
    PinnedKey {
        /// What is wrong with it.
        source: Box<crate::rules::signing::SigningError>,
    },
    /// The head is signed by another key than the pinned one.
    #[error("{} is signed by key {}, not the pinned one", path.display(), crate::rules::signing::short(by))]
    OtherKey {
        /// The head file.
        path: PathBuf,
        /// The key that signed it, hex.
        by: String,
    },
    /// The head's signature does not verify.
    #[error("{}: the signature does not verify; the head was altered", path.display())]
    BadSignature {
        /// The head file.
        path: PathBuf,
    },
    /// The signed head does not cover the log as it is.
    #[error(
        "the signed head covers {signed_entries} entries ending in {}, but the log holds {entries} ending in {}: {}",
        crate::rules::signing::short(signed_head),
        crate::rules::signing::short(head),
        if entries < signed_entries {
            "entries were removed from its end"
        } else {
            "its last entries were altered or added"
        }
    )]
    HeadMismatch {
        /// Entries the head covers.
        signed_entries: u64,
        /// The hash of the last line it covers.
        signed_head: String,
        /// Entries the log holds.
        entries: u64,
        /// The hash of the log's last line.
        head: String,
    },
    /// `vigil rollback`: the log does not verify.
    #[error("the rule change log does not verify, so it cannot say what ran")]
    Unverified {
        /// Why not.
        source: Box<ChangeLogError>,
    },
    /// `vigil rollback`: the rule never went live.
    #[error("the change log in {} has no rule `{rule}` that went live", state_dir.display())]
    NoRule {
        /// The state folder.
        state_dir: PathBuf,
        /// The rule.
        rule: String,
    },
    /// `vigil rollback --to` with too short a prefix.
    #[error("--to: give at least 8 hex digits of the module hash")]
    ShortPrefix,
    /// `vigil rollback --to` names no module the rule ran.
    #[error("`{rule}` never ran a module whose hash starts with {prefix}")]
    NoSuchModule {
        /// The rule.
        rule: String,
        /// The prefix given.
        prefix: String,
    },
    /// `vigil rollback`: the rule ran one module only.
    #[error("`{rule}` has run only module {}: nothing to roll back to", crate::rules::signing::short(only))]
    NothingToRollBack {
        /// The rule.
        rule: String,
        /// Its one module's hash.
        only: String,
    },
    /// An archived module does not hash to its name.
    #[error("{} does not hash to its name: the archive was altered", path.display())]
    ArchiveAltered {
        /// The archived module.
        path: PathBuf,
    },
    /// `vigil rollback`: the log names no module file for the rule.
    #[error("the change log names no module file for `{rule}`")]
    NoFile {
        /// The rule.
        rule: String,
    },
}

impl From<crate::rules::signing::SigningError> for ChangeLogError {
    fn from(e: crate::rules::signing::SigningError) -> Self {
        ChangeLogError::Key(Box::new(e))
    }
}

/// The change log's file name in the state folder.
pub const LOG_FILE: &str = "rule-changes.jsonl";
/// The signed head's file name in the state folder.
pub const HEAD_FILE: &str = "rule-changes.head";
/// The daemon's key that signs the head, in the state folder.
pub const KEY_FILE: &str = "daemon.key";
/// The archive's folder name in the state folder.
pub const ARCHIVE_DIR: &str = "rule-archive";
/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One change. Fields that do not apply are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// 1 for the first entry, then one more each.
    pub seq: u64,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// `load`, `replace`, `refuse`, `unload`, `quarantine`, `release`,
    /// `mode` or `list`.
    pub change: String,
    /// The rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// SHA-256 of the module now live (or refused), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// SHA-256 of the module live before, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_module: Option<String>,
    /// The ids of the trusted keys that signed the module.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
    /// The module file, or the list file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The rule's mode after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The rule's parameters after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// The list changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// SHA-256 of the list file now loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_hash: Option<String>,
    /// Values added to the list (card lists hold tokens), at most
    /// [`MAX_LISTED`]; `added_count` counts them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// How many values were added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_count: Option<usize>,
    /// Values removed from the list, at most [`MAX_LISTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// How many values were removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_count: Option<usize>,
    /// Why: `file added`, `file changed`, `settings changed`, `rollback`,
    /// `admin API (VAR)`, the failure that quarantined it, ….
    pub cause: String,
    /// SHA-256 of the previous line, hex ([`GENESIS`] for the first).
    pub prev: String,
}

/// The most list values one entry names (the counts are always whole).
pub const MAX_LISTED: usize = 1000;

/// The signed head of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Entries in the log.
    pub entries: u64,
    /// SHA-256 of the last line, hex ([`GENESIS`] when empty).
    pub head: String,
    /// The daemon's public key, hex.
    pub public_key: String,
    /// Ed25519 signature over `Head::payload`, hex.
    pub signature: String,
}

impl Head {
    fn payload(entries: u64, head: &str) -> Vec<u8> {
        format!("vigil-rule-changes-head-1\n{entries}\n{head}\n").into_bytes()
    }
}

/// The SHA-256 of one line (without its newline), hex.
fn line_hash(line: &[u8]) -> String {
    crate::rules::module_hash(line)
}

struct Chain {
    entries: u64,
    head: String,
    /// The module each rule runs, as the log has it.
    live: std::collections::BTreeMap<String, String>,
}

impl Chain {
    fn follow(&mut self, e: &Entry) {
        let Some(rule) = &e.rule else { return };
        match e.change.as_str() {
            "load" | "replace" => {
                if let Some(m) = &e.module {
                    self.live.insert(rule.clone(), m.clone());
                }
            }
            "unload" => {
                self.live.remove(rule);
            }
            _ => {}
        }
    }
}

/// The append side of the log, shared by everything that changes rules.
pub struct ChangeLog {
    dir: PathBuf,
    key: SigningKey,
    chain: Mutex<Chain>,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl ChangeLog {
    /// Opens the log in `state_dir`, making the daemon's key on first use.
    ///
    /// # Errors
    /// When the folder, the key or the log cannot be read or written.
    pub fn open(state_dir: &Path) -> Result<Self, ChangeLogError> {
        let archive = state_dir.join(ARCHIVE_DIR);
        std::fs::create_dir_all(&archive).map_err(FileError::of("create", archive))?;
        let key_path = state_dir.join(KEY_FILE);
        let key = match key_path.exists() {
            true => crate::rules::signing::read_secret(&key_path)?,
            false => {
                let key = crate::rules::signing::generate()?;
                crate::rules::signing::write_private(
                    &key_path,
                    format!("{}\n", hex::encode(key.to_bytes())).as_bytes(),
                )?;
                tracing::info!(file = %key_path.display(), public_key = %hex::encode(key.verifying_key().as_bytes()),
                    "made the daemon's key that signs the rule change log");
                key
            }
        };
        let log = state_dir.join(LOG_FILE);
        let mut chain = Chain { entries: 0, head: GENESIS.to_owned(), live: Default::default() };
        match std::fs::read(&log) {
            Ok(mut bytes) => {
                // A line cut short by a crash mid-write is not an entry:
                // dropped, so the next entry chains to the last whole one.
                if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                    tracing::warn!(file = %log.display(), bytes = bytes.len() - whole,
                        "the rule change log ends in a partial line (a write cut short); dropping it");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&log)
                        .and_then(|f| f.set_len(whole as u64))
                        .map_err(FileError::of("repair", &log))?;
                    bytes.truncate(whole);
                }
                for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    chain.entries += 1;
                    chain.head = line_hash(line);
                    // A line that is not an entry is for `vigil audit verify` to report.
                    if let Ok(e) = serde_json::from_slice::<Entry>(line) {
                        chain.follow(&e);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(FileError { verb: "read", path: log, source }.into()),
        }
        Ok(Self { dir: state_dir.to_owned(), key, chain: Mutex::new(chain) })
    }

    /// The module `rule` runs as the log last recorded it, if it runs.
    pub fn live_module(&self, rule: &str) -> Option<String> {
        self.chain.lock().unwrap_or_else(std::sync::PoisonError::into_inner).live.get(rule).cloned()
    }

    /// The daemon's public key, hex.
    pub fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Appends `entry` (its `seq`, `at` and `prev` filled in here), flushed
    /// to disk, and signs the new head. A failure to write is logged: the
    /// change itself has happened.
    pub fn record(&self, mut entry: Entry) {
        let mut chain = self.chain.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entry.seq = chain.entries + 1;
        entry.at = now_rfc3339();
        entry.prev = chain.head.clone();
        // Plain data: serialises.
        let line = serde_json::to_vec(&entry).unwrap_or_default();
        let path = self.dir.join(LOG_FILE);
        let appended = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| {
            let before = f.metadata()?.len();
            let mut buf = line.clone();
            buf.push(b'\n');
            let written = f.write_all(&buf).and_then(|()| f.sync_data());
            if written.is_err() {
                // Not half an entry: the next one chains to the last whole.
                let _ = f.set_len(before);
            }
            written
        });
        if let Err(e) = appended {
            tracing::error!(file = %path.display(), error = %e, change = %entry.change, rule = ?entry.rule,
                "cannot append to the rule change log");
            return;
        }
        chain.entries += 1;
        chain.head = line_hash(&line);
        chain.follow(&entry);
        if let Err(e) = self.write_head(&chain) {
            tracing::error!(file = %self.dir.join(HEAD_FILE).display(), error = %e,
                "cannot write the signed head of the rule change log");
        }
    }

    fn write_head(&self, chain: &Chain) -> std::io::Result<()> {
        let signature = self.key.sign(&Head::payload(chain.entries, &chain.head));
        let head = Head {
            entries: chain.entries,
            head: chain.head.clone(),
            public_key: self.public_key(),
            signature: hex::encode(signature.to_bytes()),
        };
        let mut json = serde_json::to_vec_pretty(&head).unwrap_or_default();
        json.push(b'\n');
        crate::state::write_atomically(&self.dir.join(HEAD_FILE), &json)
    }

    /// Keeps `bytes` (a module that went live, SHA-256 `hash`) in the
    /// archive, with its signature file if it has one, for rollback.
    pub fn archive(&self, hash: &str, bytes: &[u8], module: &Path) {
        let dir = self.dir.join(ARCHIVE_DIR);
        let target = dir.join(format!("{hash}.wasm"));
        let result = (|| -> std::io::Result<()> {
            if !target.exists() {
                crate::state::write_atomically(&target, bytes)?;
            }
            let sig = crate::rules::signing::sig_path(module);
            if sig.exists() {
                std::fs::copy(&sig, crate::rules::signing::sig_path(&target))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(file = %target.display(), error = %e, "cannot archive the module for rollback");
        }
    }

    /// Whether a module with SHA-256 `hash` was ever archived here.
    pub fn archived(&self, hash: &str) -> bool {
        self.dir.join(ARCHIVE_DIR).join(format!("{hash}.wasm")).exists()
    }
}

/// Whether `s` is a module's SHA-256 as the log and archive name it: 64
/// lower-case hex digits.
pub fn is_module_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Reads the log's entries.
///
/// # Errors
/// When it cannot be read, or a line is not an entry.
pub fn read(state_dir: &Path) -> Result<Vec<Entry>, ChangeLogError> {
    let path = state_dir.join(LOG_FILE);
    let text = std::fs::read_to_string(&path).map_err(FileError::of("read", &path))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| ChangeLogError::Line { path: path.clone(), line: i + 1, source })
        })
        .collect()
}

/// What `vigil audit verify` found in a log whose chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries.
    pub entries: u64,
    /// SHA-256 of the last line.
    pub head: String,
    /// The daemon key that signed the head, hex.
    pub public_key: String,
}

/// Checks the chain of the log in `state_dir` and its signed head; with
/// `pinned`, the head must be signed by that public key (hex).
///
/// # Errors
/// The first entry that is broken, or what is wrong with the head.
pub fn verify(state_dir: &Path, pinned: Option<&str>) -> Result<Verified, ChangeLogError> {
    let path = state_dir.join(LOG_FILE);
    let bytes = std::fs::read(&path).map_err(FileError::of("read", path))?;
    let mut prev = GENESIS.to_owned();
    let mut n = 0u64;
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        n += 1;
        let entry: Entry =
            serde_json::from_slice(line).map_err(|source| ChangeLogError::NotRecord { entry: n, source })?;
        if entry.prev != prev {
            return Err(match n {
                1 => ChangeLogError::BadStart,
                _ => ChangeLogError::Altered { entry: n - 1, next: n },
            });
        }
        if entry.seq != n {
            return Err(ChangeLogError::Seq { entry: n, seq: entry.seq });
        }
        prev = line_hash(line);
    }
    let head_path = state_dir.join(HEAD_FILE);
    let text = std::fs::read_to_string(&head_path).map_err(FileError::of("read", &head_path))?;
    let head: Head =
        serde_json::from_str(&text).map_err(|source| ChangeLogError::NotHead { path: head_path.clone(), source })?;
    let key = crate::rules::signing::read_public(&head.public_key)
        .map_err(|source| ChangeLogError::HeadKey { path: head_path.clone(), source: Box::new(source) })?;
    if let Some(pinned) = pinned {
        let pinned = crate::rules::signing::read_public(pinned)
            .map_err(|source| ChangeLogError::PinnedKey { source: Box::new(source) })?;
        if pinned != key {
            return Err(ChangeLogError::OtherKey { path: head_path, by: head.public_key });
        }
    }
    let signature = hex::decode(&head.signature).ok().and_then(|b| Signature::from_slice(&b).ok());
    let signed = signature.is_some_and(|s| key.verify(&Head::payload(head.entries, &head.head), &s).is_ok());
    if !signed {
        return Err(ChangeLogError::BadSignature { path: head_path });
    }
    if head.entries != n || head.head != prev {
        return Err(ChangeLogError::HeadMismatch {
            signed_entries: head.entries,
            signed_head: head.head,
            entries: n,
            head: prev,
        });
    }
    Ok(Verified { entries: n, head: prev, public_key: hex::encode(VerifyingKey::as_bytes(&key)) })
}

/// What [`rollback`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The module file written in the rules folder.
    pub file: PathBuf,
    /// The module put back.
    pub module: String,
    /// Other rules that run from the same file (instances with `of`),
    /// rolled back with it.
    pub also: Vec<String>,
}

/// `vigil rollback`: puts a module of `rule` that was live before back in
/// the rules folder `rules_dir` — the one live before the current, or the
/// archived one whose hash starts with `to` — with its signature file if it
/// had one. The daemon loads it as any new file (validation, signatures)
/// and records it as a rollback. The change log must verify first: it is
/// what says which module was live.
///
/// # Errors
/// When the log does not verify or names no such rule or version, or the
/// files cannot be written.
pub fn rollback(
    state_dir: &Path,
    rules_dir: &Path,
    rule: &str,
    to: Option<&str>,
) -> Result<RolledBack, ChangeLogError> {
    verify(state_dir, None).map_err(|e| ChangeLogError::Unverified { source: Box::new(e) })?;
    let entries = read(state_dir)?;
    let live: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.rule.as_deref() == Some(rule) && matches!(e.change.as_str(), "load" | "replace"))
        .collect();
    let Some(current) = live.last() else {
        return Err(ChangeLogError::NoRule { state_dir: state_dir.to_owned(), rule: rule.to_owned() });
    };
    let current_hash = current.module.clone().unwrap_or_default();
    let modules = live.iter().rev().filter_map(|e| e.module.as_deref()).filter(|m| is_module_hash(m));
    let target = match to {
        Some(prefix) if prefix.len() < 8 => return Err(ChangeLogError::ShortPrefix),
        Some(prefix) => modules
            .clone()
            .find(|m| m.starts_with(prefix))
            .ok_or_else(|| ChangeLogError::NoSuchModule { rule: rule.to_owned(), prefix: prefix.to_owned() })?,
        None => modules
            .clone()
            .find(|m| *m != current_hash)
            .ok_or_else(|| ChangeLogError::NothingToRollBack { rule: rule.to_owned(), only: current_hash.clone() })?,
    }
    .to_owned();
    let archived = state_dir.join(ARCHIVE_DIR).join(format!("{target}.wasm"));
    let bytes = std::fs::read(&archived).map_err(FileError::of("read", &archived))?;
    if crate::rules::module_hash(&bytes) != target {
        return Err(ChangeLogError::ArchiveAltered { path: archived });
    }
    // Only the file's name is taken from the log: it goes in the rules folder.
    let logged = PathBuf::from(current.file.clone().unwrap_or_default());
    let name = logged
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| crate::rules::is_rule_file(Path::new(n)))
        .ok_or_else(|| ChangeLogError::NoFile { rule: rule.to_owned() })?
        .to_owned();
    let file = rules_dir.join(&name);
    let place = |from: &[u8], to: &Path| crate::state::write_atomically(to, from).map_err(FileError::of("write", to));
    // The signature first, so the module never meets a signature of another.
    let sig = crate::rules::signing::sig_path(&file);
    match std::fs::read(crate::rules::signing::sig_path(&archived)) {
        Ok(archived_sig) => place(&archived_sig, &sig)?,
        Err(_) if sig.exists() => {
            std::fs::remove_file(&sig).map_err(FileError::of("remove", &sig))?;
        }
        Err(_) => {}
    }
    place(&bytes, &file)?;
    // The rules that last went live from a file of that name.
    let mut last_file: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for e in entries.iter().filter(|e| matches!(e.change.as_str(), "load" | "replace" | "unload")) {
        if let (Some(r), Some(f)) = (e.rule.as_deref(), e.file.as_deref()) {
            match e.change.as_str() {
                "unload" => last_file.remove(r),
                _ => last_file.insert(r, f),
            };
        }
    }
    let also = last_file
        .into_iter()
        .filter(|(r, f)| *r != rule && Path::new(f).file_name().and_then(|n| n.to_str()) == Some(name.as_str()))
        .map(|(r, _)| r.to_owned())
        .collect();
    Ok(RolledBack { file, module: target, also })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(change: &str, rule: &str) -> Entry {
        Entry { change: change.into(), rule: Some(rule.into()), cause: "test".into(), ..Entry::default() }
    }

    #[test]
    fn the_chain_verifies_and_any_changed_byte_or_cut_breaks_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ChangeLog::open(dir.path()).expect("open");
        for i in 0..5 {
            log.record(entry("load", &format!("r{i}")));
        }
        let ok = verify(dir.path(), None).expect("verifies");
        assert_eq!(ok.entries, 5);
        verify(dir.path(), Some(&log.public_key())).expect("pinned to its key");
        let other = crate::rules::signing::generate().expect("key");
        let e = verify(dir.path(), Some(&hex::encode(other.verifying_key().as_bytes()))).expect_err("other key");
        assert!(e.to_string().contains("not the pinned one"), "{e}");

        // Reopened, it continues the chain; a line cut short by a crash is
        // dropped first.
        drop(log);
        let path = dir.path().join(LOG_FILE);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":6,\"at\":\"20").expect("write");
        drop(f);
        ChangeLog::open(dir.path()).expect("reopen").record(entry("unload", "r0"));
        assert_eq!(verify(dir.path(), None).expect("still verifies").entries, 6);

        let original = std::fs::read(&path).expect("read");
        // A byte in the middle (entry 3): its rule name.
        let mut bytes = original.clone();
        let at = bytes.windows(4).position(|w| w == b"\"r2\"").expect("entry 3") + 2;
        bytes[at] = b'9';
        std::fs::write(&path, &bytes).expect("write");
        let e = verify(dir.path(), None).expect_err("altered").to_string();
        assert!(e.contains("entry 3 (line 3) was altered"), "{e}");

        // The last entry cut off.
        let cut = original[..original.len() - 1].iter().rposition(|&b| b == b'\n').expect("lines") + 1;
        std::fs::write(&path, &original[..cut]).expect("write");
        let e = verify(dir.path(), None).expect_err("cut").to_string();
        assert!(e.contains("entries were removed from its end"), "{e}");
    }
}
