//! The manifest a rule exports: who it is and what it needs.
//!
//! The guest writes it as JSON with [`ManifestDef::to_json`] (no serde in the
//! guest keeps modules small); the host reads it into [`Manifest`].

use crate::ParamValue;
use core::fmt::{self, Write};

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ParamType {
    /// `bool`.
    Bool,
    /// `i64`.
    Int,
    /// `f64`.
    Float,
    /// `String`.
    Str,
}

impl ParamType {
    /// The name used in manifests and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Bool => "bool",
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::Str => "str",
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A declared parameter, as the host reads it.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ParamSpec {
    /// Its name.
    pub name: String,
    /// Its type.
    #[cfg_attr(feature = "serde", serde(rename = "type"))]
    pub ty: ParamType,
    /// The value used when the host config does not set it.
    pub default: ParamValue,
}

/// A rule's manifest, as the host reads it.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Manifest {
    /// The ABI version the manifest was written for.
    pub abi: i32,
    /// Rule name; unique among loaded rules; config refers to it.
    pub name: String,
    /// Rule version, free text (semver recommended).
    pub version: String,
    /// One line on what the rule looks for.
    #[cfg_attr(feature = "serde", serde(default))]
    pub description: String,
    /// Event fields the rule reads; it sees no other.
    pub fields: Vec<String>,
    /// Parameters with defaults.
    #[cfg_attr(feature = "serde", serde(default))]
    pub params: Vec<ParamSpec>,
    /// Named lists the rule looks values up in.
    #[cfg_attr(feature = "serde", serde(default))]
    pub lists: Vec<String>,
    /// Features the rule reads, in the order it receives them.
    #[cfg_attr(feature = "serde", serde(default))]
    pub features: Vec<String>,
    /// The entity the rule's keyed state belongs to (`card`, `account`,
    /// `counterparty`, `device`, `ip` or `merchant`); none: `account`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub state: Option<String>,
}

/// A parameter default, as the `#[rule]` macro writes it into a static.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
    /// `bool`.
    Bool(bool),
    /// `i64`.
    Int(i64),
    /// `f64`.
    Float(f64),
    /// `&str`.
    Str(&'static str),
}

impl ParamDefault {
    /// The owned value.
    pub fn to_value(self) -> ParamValue {
        match self {
            ParamDefault::Bool(b) => ParamValue::Bool(b),
            ParamDefault::Int(i) => ParamValue::Int(i),
            ParamDefault::Float(x) => ParamValue::Float(x),
            ParamDefault::Str(s) => ParamValue::Str(s.to_owned()),
        }
    }
}

/// A declared parameter, as the `#[rule]` macro writes it into a static.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamDef {
    /// Its name.
    pub name: &'static str,
    /// Its default, which also fixes its type.
    pub default: ParamDefault,
}

/// A rule's manifest, as the `#[rule]` macro writes it into a static.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ManifestDef {
    /// Rule name.
    pub name: &'static str,
    /// Rule version.
    pub version: &'static str,
    /// One line on what the rule looks for.
    pub description: &'static str,
    /// Event fields read.
    pub fields: &'static [&'static str],
    /// Parameters with defaults.
    pub params: &'static [ParamDef],
    /// Named lists used.
    pub lists: &'static [&'static str],
    /// Features read.
    pub features: &'static [&'static str],
    /// The entity whose keyed state the rule reads and writes.
    pub state: Option<&'static str>,
}

impl ManifestDef {
    /// The manifest as the JSON the host reads.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(256);
        let _ = self.write_json(&mut s);
        s
    }

    fn write_json(&self, s: &mut String) -> fmt::Result {
        write!(s, "{{\"abi\":{},\"name\":", crate::ABI_VERSION)?;
        json_str(s, self.name)?;
        s.push_str(",\"version\":");
        json_str(s, self.version)?;
        s.push_str(",\"description\":");
        json_str(s, self.description)?;
        for (key, list) in [("fields", self.fields), ("lists", self.lists), ("features", self.features)] {
            write!(s, ",\"{key}\":[")?;
            for (i, item) in list.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                json_str(s, item)?;
            }
            s.push(']');
        }
        if let Some(state) = self.state {
            s.push_str(",\"state\":");
            json_str(s, state)?;
        }
        s.push_str(",\"params\":[");
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str("{\"name\":");
            json_str(s, p.name)?;
            let ty = p.default.to_value().ty();
            write!(s, ",\"type\":\"{ty}\",\"default\":")?;
            match p.default {
                ParamDefault::Bool(b) => write!(s, "{b}")?,
                ParamDefault::Int(v) => write!(s, "{v}")?,
                // `{:?}` keeps a decimal point, so the JSON stays a float.
                ParamDefault::Float(x) if x.is_finite() => write!(s, "{x:?}")?,
                ParamDefault::Float(_) => s.push_str("null"),
                ParamDefault::Str(v) => json_str(s, v)?,
            }
            s.push('}');
        }
        s.push_str("]}");
        Ok(())
    }
}

fn json_str(s: &mut String, v: &str) -> fmt::Result {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => write!(s, "\\u{:04x}", c as u32)?,
            c => s.push(c),
        }
    }
    s.push('"');
    Ok(())
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    #[test]
    fn guest_json_is_what_the_host_reads() {
        let def = ManifestDef {
            name: "large \"amount\"",
            version: "1.2.0",
            description: "tab\there",
            fields: &["amount", "currency"],
            params: &[
                ParamDef { name: "max", default: ParamDefault::Int(-3) },
                ParamDef { name: "ratio", default: ParamDefault::Float(2.0) },
                ParamDef { name: "on", default: ParamDefault::Bool(true) },
                ParamDef { name: "mode", default: ParamDefault::Str("a\\b") },
            ],
            lists: &["blocked"],
            features: &[],
            state: Some("device"),
        };
        let m: Manifest = serde_json::from_str(&def.to_json()).expect("valid manifest JSON");
        assert_eq!(m.name, def.name);
        assert_eq!(m.description, def.description);
        assert_eq!(m.fields, ["amount", "currency"]);
        assert_eq!(m.lists, ["blocked"]);
        assert_eq!(m.state.as_deref(), Some("device"));
        let got: Vec<_> = m.params.iter().map(|p| (p.name.as_str(), p.ty, p.default.clone())).collect();
        assert_eq!(
            got,
            [
                ("max", ParamType::Int, ParamValue::Int(-3)),
                ("ratio", ParamType::Float, ParamValue::Float(2.0)),
                ("on", ParamType::Bool, ParamValue::Bool(true)),
                ("mode", ParamType::Str, ParamValue::Str("a\\b".into())),
            ]
        );
    }
}
