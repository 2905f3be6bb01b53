//! Signed rule modules: Ed25519 key pairs (`vigil keygen`), detached
//! signatures beside a module (`vigil sign`), and the check the daemon,
//! `vigil check` and `vigil replay` make with `rules.require-signature`.
//!
//! A signature file `NAME.wasm.sig` states what was approved — the module's
//! SHA-256, its manifest name and version, and the settings of every rule
//! the module runs as (its own and each `[rule.X] of = NAME` instance:
//! mode, failure outcome, parameters, canary share) — and carries one
//! signature per approver over exactly that statement. A module loads only
//! when the statement matches the module and the settings it would run
//! with, and enough distinct trusted keys signed it: changing a signed
//! rule's parameters or mode needs a new signature, like changing its code.

use crate::error::FileError;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{RuleSettings, RulesConfig};

/// The `format` of signature files this version writes and reads.
pub const FORMAT: &str = "vigil-signature-1";

/// Why a key, a signature file or a module's approval does not do.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A file or folder could not be read, written, created or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The system gave no randomness for a key.
    #[error("cannot read system randomness")]
    Randomness {
        /// What the system said.
        source: getrandom::Error,
    },
    /// `vigil keygen` found a key file there already.
    #[error("{} exists; vigil keygen does not overwrite keys", path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// A secret key file holds no key.
    #[error("{}: not a vigil secret key (64 hex digits)", path.display())]
    NotSecretKey {
        /// The file.
        path: PathBuf,
    },
    /// A public key given is not hex and names no readable file.
    #[error("`{given}` is neither 64 hex digits nor a readable key file")]
    PublicKeyUnreadable {
        /// What was given.
        given: String,
        /// Why the file could not be read.
        source: std::io::Error,
    },
    /// A public key given, or its file, holds no 64 hex digits.
    #[error("`{given}` does not hold a public key (64 hex digits)")]
    NotPublicKey {
        /// What was given.
        given: String,
    },
    /// The 32 bytes are not an Ed25519 public key.
    #[error("`{given}` is not an Ed25519 public key")]
    NotEd25519 {
        /// What was given.
        given: String,
        /// What the Ed25519 library said.
        source: ed25519_dalek::SignatureError,
    },
    /// A signature file does not parse.
    #[error("{} is not a vigil signature file", path.display())]
    NotSignatureFile {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// A signature file of another format.
    #[error("{}: format `{format}`, expected `{FORMAT}`", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The format it names.
        format: String,
    },
    /// No signature file, and one is required.
    #[error("unsigned: rules.require-signature is on and {} does not exist (sign it with `vigil sign`)", sig.display())]
    Unsigned {
        /// The signature file looked for.
        sig: PathBuf,
    },
    /// The signature file approves another module.
    #[error("{} was signed for module {}, but this module's SHA-256 is {hash}", sig.display(), short(signed))]
    OtherModule {
        /// The signature file.
        sig: PathBuf,
        /// The module hash it approves.
        signed: String,
        /// The module's hash.
        hash: String,
    },
    /// The signature file approves another rule or version.
    #[error(
        "{} was signed for rule `{signed_rule}` version {signed_version}, but the module is `{rule}` version {version}",
        sig.display()
    )]
    OtherRule {
        /// The signature file.
        sig: PathBuf,
        /// The rule it approves.
        signed_rule: String,
        /// The version it approves.
        signed_version: String,
        /// The module's rule.
        rule: String,
        /// The module's version.
        version: String,
    },
    /// The settings the module would run with are not those approved.
    #[error(
        "the settings of {} differ from those signed in {} (mode, on-failure, params, canary); \
         sign again with the config that holds them (`vigil sign --config`)",
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
        sig.display()
    )]
    Settings {
        /// The rules whose settings differ.
        names: Vec<String>,
        /// The signature file.
        sig: PathBuf,
    },
    /// A signature by a trusted key does not verify: tampering.
    #[error("{}: {}", sig.display(), problems.join("; "))]
    Tampered {
        /// The signature file.
        sig: PathBuf,
        /// Each signature that does not verify.
        problems: Vec<String>,
    },
    /// Fewer distinct trusted keys signed than are required.
    #[error(
        "{}: signed by {signers} trusted key(s), {required} distinct required (rules.signatures-required){}",
        sig.display(),
        if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) }
    )]
    TooFew {
        /// The signature file.
        sig: PathBuf,
        /// Distinct trusted keys that signed.
        signers: usize,
        /// Distinct signatures required.
        required: usize,
        /// The signatures that did not count, and why.
        problems: Vec<String>,
    },
    /// `vigil sign`: the rule sandbox could not be set up.
    #[error(transparent)]
    Sandbox(crate::rules::RuleError),
    /// `vigil sign`: the module is not a valid rule.
    #[error("{} is not a valid rule", module.display())]
    Invalid {
        /// The module.
        module: PathBuf,
        /// Why not.
        source: crate::rules::RuleError,
    },
    /// `vigil sign`: the signature file cannot be encoded.
    #[error("cannot encode the signature file")]
    Encode {
        /// What the encoder said.
        source: serde_json::Error,
    },
}

/// The signature file of `module`: its path with `.sig` appended.
pub fn sig_path(module: &Path) -> PathBuf {
    let mut name = module.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// A public key's id: the first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    crate::rules::module_hash(key.as_bytes())[..16].to_owned()
}

/// A new key pair from the operating system's randomness.
///
/// # Errors
/// When the system has no randomness to give.
pub fn generate() -> Result<SigningKey, SigningError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|source| SigningError::Randomness { source })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to `BASE.key` (secret, mode 0600) and its public half to
/// `BASE.pub`, each as one line of hex; returns both paths.
///
/// # Errors
/// When either exists already, or cannot be written.
pub fn write_pair(base: &Path, key: &SigningKey) -> Result<(PathBuf, PathBuf), SigningError> {
    let secret = base.with_extension("key");
    let public = base.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            return Err(SigningError::Exists { path: p.clone() });
        }
    }
    if let Some(dir) = base.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(FileError::of("create", dir))?;
    }
    write_private(&secret, format!("{}\n", hex::encode(key.to_bytes())).as_bytes())?;
    std::fs::write(&public, format!("{}\n", hex::encode(key.verifying_key().as_bytes())))
        .map_err(FileError::of("write", &public))?;
    Ok((secret, public))
}

/// Writes a file only its owner can read, created new.
///
/// # Errors
/// When it exists or cannot be written.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SigningError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(FileError::of("create", path))?;
    Ok(f.write_all(bytes).and_then(|()| f.sync_all()).map_err(FileError::of("write", path))?)
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s.trim()).ok()?.try_into().ok()
}

/// Reads a secret key written by [`write_pair`].
///
/// # Errors
/// When the file cannot be read or holds no key.
pub fn read_secret(path: &Path) -> Result<SigningKey, SigningError> {
    let text = std::fs::read_to_string(path).map_err(FileError::of("read", path))?;
    let bytes = hex32(&text).ok_or_else(|| SigningError::NotSecretKey { path: path.to_owned() })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A public key given as 64 hex digits, or as the path of a `.pub` file
/// holding them.
///
/// # Errors
/// What is wrong with it.
pub fn read_public(given: &str) -> Result<VerifyingKey, SigningError> {
    let text = match hex32(given) {
        Some(_) => given.to_owned(),
        None => std::fs::read_to_string(given)
            .map_err(|source| SigningError::PublicKeyUnreadable { given: given.to_owned(), source })?,
    };
    let bytes = hex32(&text).ok_or_else(|| SigningError::NotPublicKey { given: given.to_owned() })?;
    VerifyingKey::from_bytes(&bytes).map_err(|source| SigningError::NotEd25519 { given: given.to_owned(), source })
}

/// What a signature approves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// [`FORMAT`].
    pub format: String,
    /// SHA-256 of the module file, hex.
    pub module: String,
    /// The manifest's rule name.
    pub rule: String,
    /// The manifest's version.
    pub version: String,
    /// The settings of each rule the module runs as, by rule name, as
    /// [`settings_value`] gives them.
    pub settings: BTreeMap<String, serde_json::Value>,
}

impl Statement {
    /// The bytes signed: the statement as compact JSON, keys sorted.
    pub fn payload(&self) -> Vec<u8> {
        // Plain data with sorted maps: serialises, and always the same way.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One approver's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// [`key_id`] of the key.
    pub key: String,
    /// The public key, hex (for people; verification uses the trusted one).
    pub public_key: String,
    /// The Ed25519 signature over [`Statement::payload`], hex.
    pub signature: String,
}

/// A signature file: the statement and its signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignatureFile {
    /// What is approved.
    #[serde(flatten)]
    pub statement: Statement,
    /// By whom.
    pub signatures: Vec<Approval>,
}

impl SignatureFile {
    /// Reads `path`.
    ///
    /// # Errors
    /// When it cannot be read or is not a signature file.
    pub fn read(path: &Path) -> Result<Self, SigningError> {
        let bytes = std::fs::read(path).map_err(FileError::of("read", path))?;
        let file: Self = serde_json::from_slice(&bytes)
            .map_err(|source| SigningError::NotSignatureFile { path: path.to_owned(), source })?;
        if file.statement.format != FORMAT {
            return Err(SigningError::Format { path: path.to_owned(), format: file.statement.format });
        }
        Ok(file)
    }

    /// Adds `key`'s signature, replacing an earlier one by the same key.
    pub fn sign(&mut self, key: &SigningKey) {
        let public = key.verifying_key();
        let id = key_id(&public);
        let signature = key.sign(&self.statement.payload());
        self.signatures.retain(|a| a.key != id);
        self.signatures.push(Approval {
            key: id,
            public_key: hex::encode(public.as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        });
    }
}

/// A rule's settings as a signature covers them: every setting that
/// changes what the rule decides.
pub fn settings_value(s: &RuleSettings) -> serde_json::Value {
    // Plain data: serialises.
    serde_json::to_value(s).unwrap_or(serde_json::Value::Null)
}

/// The settings of the rules module rule `name` runs as under `settings`:
/// its own (defaults when it has none) and its instances', each with the
/// failure outcome it gets (its own or `default_on_failure`, which
/// `rules.on-failure` sets).
pub fn covered_settings(
    name: &str,
    settings: &BTreeMap<String, RuleSettings>,
    default_on_failure: crate::decide::FailurePolicy,
) -> BTreeMap<String, serde_json::Value> {
    let effective = |s: &RuleSettings| {
        let mut s = s.clone();
        s.on_failure = Some(s.on_failure.unwrap_or(default_on_failure));
        settings_value(&s)
    };
    let mut covered = BTreeMap::new();
    covered.insert(name.to_owned(), effective(&settings.get(name).cloned().unwrap_or_default()));
    for (instance, s) in settings.iter().filter(|(n, s)| s.of.as_deref() == Some(name) && *n != name) {
        covered.insert(instance.clone(), effective(s));
    }
    covered
}

/// The first 16 characters of a hash or key, or all of a shorter text.
pub fn short(s: &str) -> &str {
    s.char_indices().nth(16).map_or(s, |(i, _)| &s[..i])
}

/// The keys a deployment trusts and how many must sign.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    keys: Vec<(String, VerifyingKey)>,
    /// Distinct trusted signatures a module needs; 0: none.
    required: usize,
}

impl Trust {
    /// From `[rules]`: `trusted-keys`, `require-signature`,
    /// `signatures-required`.
    ///
    /// # Errors
    /// The setting that is wrong, and why.
    pub fn from_config(rules: &RulesConfig) -> Result<Self, crate::config::ConfigError> {
        use crate::config::ConfigError;
        let mut keys = Vec::new();
        for given in &rules.trusted_keys {
            let key = read_public(given)
                .map_err(|e| ConfigError::invalid("rules.trusted-keys", crate::error::chain(&e).to_string()))?;
            let id = key_id(&key);
            if !keys.iter().any(|(k, _)| *k == id) {
                keys.push((id, key));
            }
        }
        let required = match (rules.require_signature, rules.signatures_required) {
            (false, None) => 0,
            (false, Some(_)) => {
                return Err(ConfigError::invalid("rules.signatures-required", "needs rules.require-signature = true"));
            }
            (true, n) => n.map_or(1, |n| n.get() as usize),
        };
        if required > 0 && keys.len() < required {
            return Err(ConfigError::invalid(
                "rules.trusted-keys",
                format!(
                    "lists {} distinct key(s), fewer than the {required} signature(s) required; \
                     add the approvers' public keys (vigil keygen writes them)",
                    keys.len()
                ),
            ));
        }
        Ok(Self { keys, required })
    }

    /// Whether modules must be signed.
    pub fn required(&self) -> bool {
        self.required > 0
    }

    /// Checks the signature file beside `path` approves this module (its
    /// `hash`, manifest `rule` and `version`) with the settings it would
    /// run with, signed by enough distinct trusted keys; returns the ids
    /// of the trusted keys that signed. With no signature required, an
    /// absent signature file gives none, and a present one is still
    /// checked, so its signers can be recorded.
    ///
    /// # Errors
    /// Why the module is refused.
    pub fn verify(
        &self,
        path: &Path,
        hash: &str,
        rule: &str,
        version: &str,
        covered: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Vec<String>, SigningError> {
        self.check(path, hash, Some((rule, version, covered)))
    }

    /// [`Trust::verify`] of the module's hash and the signatures alone:
    /// what can be checked before the module is compiled and its manifest
    /// read, so an unapproved module never runs, not even to be read.
    ///
    /// # Errors
    /// Why the module is refused.
    pub fn precheck(&self, path: &Path, hash: &str) -> Result<Vec<String>, SigningError> {
        self.check(path, hash, None)
    }

    fn check(
        &self,
        path: &Path,
        hash: &str,
        statement: Option<(&str, &str, &BTreeMap<String, serde_json::Value>)>,
    ) -> Result<Vec<String>, SigningError> {
        let sig = sig_path(path);
        if !sig.exists() {
            return match self.required() {
                true => Err(SigningError::Unsigned { sig }),
                false => Ok(Vec::new()),
            };
        }
        let file = SignatureFile::read(&sig)?;
        let s = &file.statement;
        if s.module != hash {
            return Err(SigningError::OtherModule { sig, signed: s.module.clone(), hash: hash.to_owned() });
        }
        let payload = s.payload();
        let signers = self.signers(&sig, &file, &payload)?;
        let Some((rule, version, covered)) = statement else {
            return Ok(signers);
        };
        if s.rule != rule || s.version != version {
            return Err(SigningError::OtherRule {
                sig,
                signed_rule: s.rule.clone(),
                signed_version: s.version.clone(),
                rule: rule.to_owned(),
                version: version.to_owned(),
            });
        }
        if s.settings != *covered {
            let mut names: Vec<String> = covered
                .keys()
                .chain(s.settings.keys())
                .filter(|n| s.settings.get(*n) != covered.get(*n))
                .cloned()
                .collect();
            names.sort_unstable();
            names.dedup();
            return Err(SigningError::Settings { names, sig });
        }
        Ok(signers)
    }

    /// The trusted keys whose signatures on `file` verify, when enough do.
    fn signers(&self, sig: &Path, file: &SignatureFile, payload: &[u8]) -> Result<Vec<String>, SigningError> {
        let mut signers: Vec<String> = Vec::new();
        let mut problems = Vec::new();
        for a in &file.signatures {
            let Some((id, key)) = self.keys.iter().find(|(id, _)| *id == a.key) else {
                problems.push(format!("key {} is not in rules.trusted-keys", a.key));
                continue;
            };
            let valid = hex::decode(&a.signature)
                .ok()
                .and_then(|b| Signature::from_slice(&b).ok())
                .is_some_and(|sig| key.verify(payload, &sig).is_ok());
            match valid {
                true if !signers.contains(id) => signers.push(id.clone()),
                true => {}
                false => problems.push(format!("the signature by key {} does not verify", a.key)),
            }
        }
        let tampered: Vec<String> = problems.iter().filter(|p| p.contains("does not verify")).cloned().collect();
        if self.required() && !tampered.is_empty() {
            // A bad signature beside good ones is tampering, not approval.
            return Err(SigningError::Tampered { sig: sig.to_owned(), problems: tampered });
        }
        if signers.len() < self.required {
            return Err(SigningError::TooFew {
                sig: sig.to_owned(),
                signers: signers.len(),
                required: self.required,
                problems,
            });
        }
        Ok(signers)
    }
}

/// `vigil sign`: adds `key`'s signature to `module`'s signature file, over
/// the module, its manifest's name and version, and the settings `config`
/// gives each rule it runs as. A file approving anything else is replaced
/// (its signatures were for that); returns the file's path, the statement
/// and how many signatures it now holds.
///
/// # Errors
/// When the module cannot be read or is not a valid rule, or the file
/// cannot be written.
pub fn sign_module(
    config: &crate::config::Config,
    module: &Path,
    key: &SigningKey,
) -> Result<(PathBuf, Statement, usize), SigningError> {
    let bytes = std::fs::read(module).map_err(FileError::of("read", module))?;
    let hash = crate::rules::module_hash(&bytes);
    let sandbox = crate::rules::sandbox::Sandbox::from_config(config).map_err(SigningError::Sandbox)?;
    let rejected = |source| SigningError::Invalid { module: module.to_owned(), source };
    let pre = sandbox.prepare(&bytes, &hash).map_err(rejected)?;
    let (manifest, _) = crate::rules::read_manifest(&sandbox, &pre).map_err(rejected)?;
    let statement = Statement {
        format: FORMAT.into(),
        module: hash,
        rule: manifest.name.clone(),
        version: manifest.version.clone(),
        settings: covered_settings(&manifest.name, &config.rule, config.rules.on_failure),
    };
    let path = sig_path(module);
    let mut file = match SignatureFile::read(&path) {
        Ok(f) if f.statement == statement => f,
        Ok(_) => {
            eprintln!(
                "note: {} approved another module or other settings; its signatures are replaced",
                path.display()
            );
            SignatureFile { statement: statement.clone(), signatures: Vec::new() }
        }
        Err(_) => SignatureFile { statement: statement.clone(), signatures: Vec::new() },
    };
    file.sign(key);
    let mut json = serde_json::to_vec_pretty(&file).map_err(|source| SigningError::Encode { source })?;
    json.push(b'\n');
    crate::state::write_atomically(&path, &json).map_err(FileError::of("write", &path))?;
    Ok((path, statement, file.signatures.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_mistakes_name_the_key() {
        let err = |text: &str| {
            let config = crate::config::Config::parse(text, Path::new("t.toml")).expect("parses");
            Trust::from_config(&config.rules).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(err("[rules]\nrequire-signature = true\n").contains("rules.trusted-keys"), "no key to trust");
        assert!(err("[rules]\nsignatures-required = 2\n").contains("needs rules.require-signature"));
        let key = "1".repeat(64);
        let e =
            err(&format!("[rules]\nrequire-signature = true\nsignatures-required = 2\ntrusted-keys = [\"{key}\"]\n"));
        assert!(e.contains("rules.trusted-keys") || e.contains("not an Ed25519"), "{e}");
        assert!(err("[rules]\ntrusted-keys = [\"nope\"]\n").contains("rules.trusted-keys"));
    }

    fn trust(keys: &[&SigningKey], required: usize) -> Trust {
        Trust { keys: keys.iter().map(|k| (key_id(&k.verifying_key()), k.verifying_key())).collect(), required }
    }

    fn signed(dir: &Path, keys: &[&SigningKey], settings: BTreeMap<String, serde_json::Value>) -> PathBuf {
        let module = dir.join("r.wasm");
        std::fs::write(&module, b"module").expect("write");
        let statement = Statement {
            format: FORMAT.into(),
            module: crate::rules::module_hash(b"module"),
            rule: "r".into(),
            version: "1.0.0".into(),
            settings,
        };
        let mut file = SignatureFile { statement, signatures: Vec::new() };
        for k in keys {
            file.sign(k);
        }
        std::fs::write(sig_path(&module), serde_json::to_vec(&file).expect("json")).expect("write");
        module
    }

    #[test]
    fn a_module_needs_enough_distinct_trusted_signatures_over_what_it_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, stranger) = (generate().expect("key"), generate().expect("key"), generate().expect("key"));
        let allow = crate::decide::FailurePolicy::Allow;
        let settings = covered_settings("r", &BTreeMap::new(), allow);
        let hash = crate::rules::module_hash(b"module");
        let verify = |t: &Trust, m: &Path, s: &BTreeMap<String, serde_json::Value>| {
            t.verify(m, &hash, "r", "1.0.0", s).map_err(|e| crate::error::chain(&e).to_string())
        };

        let m = signed(dir.path(), &[&a], settings.clone());
        assert_eq!(verify(&trust(&[&a, &b], 1), &m, &settings).expect("one of one"), vec![key_id(&a.verifying_key())]);
        let e = verify(&trust(&[&a, &b], 2), &m, &settings).expect_err("one of two");
        assert!(e.contains("1 trusted key(s), 2 distinct required"), "{e}");
        let e = verify(&trust(&[&b], 1), &m, &settings).expect_err("wrong key");
        assert!(e.contains("signed by 0 trusted key(s)") && e.contains("not in rules.trusted-keys"), "{e}");
        let e = verify(&trust(&[&a], 1), &m, &covered_settings("r", &shadow(), allow)).expect_err("settings changed");
        assert!(e.contains("settings of `r` differ"), "{e}");
        let fail_closed = covered_settings("r", &BTreeMap::new(), crate::decide::FailurePolicy::Block);
        let e = verify(&trust(&[&a], 1), &m, &fail_closed).expect_err("rules.on-failure changed");
        assert!(e.contains("settings of `r` differ"), "{e}");
        assert_eq!(trust(&[&a], 1).precheck(&m, &hash).expect("signatures alone").len(), 1);
        let e =
            trust(&[&a], 1).verify(&m, &"0".repeat(64), "r", "1.0.0", &settings).expect_err("other module").to_string();
        assert!(e.contains("signed for module"), "{e}");

        let m = signed(dir.path(), &[&a, &a, &stranger, &b], settings.clone());
        assert_eq!(verify(&trust(&[&a, &b], 2), &m, &settings).expect("two distinct").len(), 2);

        // One byte of the signature changed.
        let mut file = SignatureFile::read(&sig_path(&m)).expect("read");
        let s = &mut file.signatures[0].signature;
        s.replace_range(0..2, if s.starts_with("00") { "01" } else { "00" });
        std::fs::write(sig_path(&m), serde_json::to_vec(&file).expect("json")).expect("write");
        let e = verify(&trust(&[&a, &b], 1), &m, &settings).expect_err("tampered");
        assert!(e.contains("does not verify"), "{e}");

        std::fs::remove_file(sig_path(&m)).expect("rm");
        let e = verify(&trust(&[&a], 1), &m, &settings).expect_err("unsigned");
        assert!(e.starts_with("unsigned"), "{e}");
        assert!(verify(&Trust::default(), &m, &settings).expect("not required").is_empty());
    }

    fn shadow() -> BTreeMap<String, RuleSettings> {
        let s = RuleSettings { mode: crate::decide::Mode::Shadow, ..RuleSettings::default() };
        BTreeMap::from([("r".to_owned(), s)])
    }
}
