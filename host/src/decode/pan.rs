//! PAN tokenisation: a keyed HMAC, so tokens are stable for a key but cannot
//! be reversed or recomputed without it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Turns PANs into tokens. Cheap to clone.
#[derive(Clone)]
pub struct Tokenizer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizer(<key>)")
    }
}

impl Tokenizer {
    /// A tokenizer for `key`.
    pub fn new(key: &[u8]) -> Self {
        Self { mac: Hmac::new_from_slice(key).expect("HMAC takes keys of any length") }
    }

    /// The token of a PAN given as its digits: `tok_` and 24 hex digits
    /// (96 bits of HMAC-SHA256).
    pub fn token(&self, digits: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(digits.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut token = *b"tok_000000000000000000000000";
        hex::encode_to_slice(&tag[..12], &mut token[4..]).expect("24 hex digits for 12 bytes");
        String::from_utf8(token.to_vec()).expect("ASCII")
    }
}

/// The digits of a PAN, kept on the stack (see [`pan_digits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanDigits {
    digits: [u8; 19],
    len: u8,
}

/// The digits as text.
impl std::ops::Deref for PanDigits {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.digits[..usize::from(self.len)]).expect("ASCII digits")
    }
}

/// The digits of a PAN written with optional spaces or dashes, if it has
/// 12 to 19 digits and nothing else.
pub fn pan_digits(raw: &str) -> Option<PanDigits> {
    let mut out = PanDigits { digits: [0; 19], len: 0 };
    for &b in raw.as_bytes() {
        match b {
            b'0'..=b'9' => {
                *out.digits.get_mut(usize::from(out.len))? = b;
                out.len += 1;
            }
            b' ' | b'-' => {}
            _ => return None,
        }
    }
    (out.len >= 12).then_some(out)
}

/// Replaces every run of 12–19 digits (optionally split by spaces or dashes)
/// with `[pan]`. Used on raw input that could not be parsed, before it goes
/// anywhere a person can read it.
pub fn scrub_pans(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let (mut end, mut digits) = (i, 0);
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b' ' || b[i] == b'-') {
            if b[i].is_ascii_digit() {
                digits += 1;
                end = i + 1;
            }
            i += 1;
        }
        if (12..=19).contains(&digits) {
            out.push_str(&text[copied..start]);
            out.push_str("[pan]");
            copied = end;
        }
        i = end.max(start + 1);
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_key_and_differ_across_keys() {
        let a = Tokenizer::new(b"key-one-0123456789");
        let b = Tokenizer::new(b"key-two-0123456789");
        let t = a.token("4111111111111111");
        assert_eq!(t, a.token("4111111111111111"));
        assert_ne!(t, b.token("4111111111111111"));
        assert_ne!(t, a.token("4111111111111112"));
        assert!(t.starts_with("tok_") && t.len() == 28);
        assert!(!t.contains("4111111111111111"));
        // The form tokens already stored in state and lists have.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key-one-0123456789").expect("key");
        mac.update(b"4111111111111111");
        assert_eq!(t, format!("tok_{}", hex::encode(&mac.finalize().into_bytes()[..12])));
    }

    #[test]
    fn pan_digits_accepts_separators_only() {
        assert_eq!(pan_digits("4111 1111-1111 1111").as_deref(), Some("4111111111111111"));
        assert_eq!(pan_digits("411111111111").as_deref(), Some("411111111111"));
        assert_eq!(pan_digits("4111111111111111111").as_deref(), Some("4111111111111111111"));
        assert_eq!(pan_digits("41111111111"), None);
        assert_eq!(pan_digits("4111x1111111111111"), None);
        assert_eq!(pan_digits("12345"), None);
        assert_eq!(pan_digits("12345678901234567890"), None);
    }

    #[test]
    fn scrub_removes_pan_like_runs_and_keeps_the_rest() {
        let s = scrub_pans(r#"{"card":"4111 1111 1111 1111","amount":12.5,"id":"a1"}"#);
        assert_eq!(s, r#"{"card":"[pan]","amount":12.5,"id":"a1"}"#);
        assert_eq!(scrub_pans("zip 12345, pan 5500000000000004!"), "zip 12345, pan [pan]!");
        assert_eq!(scrub_pans("no digits"), "no digits");
    }
}
