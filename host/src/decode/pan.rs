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

    /// A 32-byte key for another purpose, derived from the PAN key (an
    /// HMAC of `label`): secret as the PAN key is, and the same on every
    /// daemon that shares it.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(b"\0derive\0");
        mac.update(label);
        mac.finalize().into_bytes().into()
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

/// A run of digits in text, possibly grouped by single spaces or dashes
/// (`4111 1111-1111 1111`): its byte range and the positions of its digits.
struct Run {
    start: usize,
    end: usize,
    /// Byte offsets of the run's digits, in order.
    digits: smallvec::SmallVec<[u32; 24]>,
}

/// The digit runs of `text` with at least 12 digits: the only places a card
/// number can be.
fn long_runs(text: &str) -> impl Iterator<Item = Run> + '_ {
    let b = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            if !b[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            let mut run = Run { start, end: i, digits: smallvec::SmallVec::new() };
            while i < b.len() {
                if b[i].is_ascii_digit() {
                    run.digits.push(i as u32);
                    run.end = i + 1;
                    i += 1;
                } else if (b[i] == b' ' || b[i] == b'-') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                } else {
                    break;
                }
            }
            i = run.end.max(start + 1);
            if run.digits.len() >= 12 {
                return Some(run);
            }
        }
        None
    })
}

/// Whether `digits` pass the Luhn check every card number passes.
pub fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.rev().enumerate() {
        let d = u32::from(d - b'0');
        sum += if i % 2 == 1 { if d > 4 { d * 2 - 9 } else { d * 2 } } else { d };
    }
    sum.is_multiple_of(10)
}

impl Run {
    fn digit(&self, text: &[u8], k: usize) -> u8 {
        text[self.digits[k] as usize]
    }

    /// Whether digits `from..to` of the run pass the Luhn check.
    fn luhn_at(&self, text: &[u8], from: usize, to: usize) -> bool {
        luhn((from..to).map(|k| self.digit(text, k)))
    }

    /// Whether any 12 to 19 consecutive digits of the run pass the Luhn
    /// check: a card number could be hidden in it, glued to other digits.
    fn hides_a_card_number(&self, text: &[u8]) -> bool {
        let n = self.digits.len();
        (0..n).any(|from| (12..=19).any(|len| from + len <= n && self.luhn_at(text, from, from + len)))
    }

    /// The card numbers in a run as accepted input shows them: each
    /// stretch of whole groups (split by spaces or dashes) with 12 to 19
    /// digits that passes the Luhn check and is not glued to letters — the
    /// whole run `4111 1111 1111 1111`, or the card number in
    /// `ref 2024 4111111111111111` and `tx2-4111-1111-1111-1111`. A group of
    /// more than 19 digits is a long number (an Alipay trade number has
    /// 28), and digits glued to letters are part of a word (a hex digest).
    fn card_numbers(&self, text: &[u8]) -> smallvec::SmallVec<[(usize, usize); 1]> {
        let n = self.digits.len();
        let letter = |at: Option<usize>| at.and_then(|i| text.get(i)).is_some_and(u8::is_ascii_alphabetic);
        // Group starts: digit indices that begin the run or follow a separator.
        let starts: smallvec::SmallVec<[usize; 8]> =
            (0..n).filter(|&k| k == 0 || self.digits[k] != self.digits[k - 1] + 1).chain(std::iter::once(n)).collect();
        let mut found = smallvec::SmallVec::new();
        let mut g = 0;
        while g + 1 < starts.len() {
            let hit = (g + 1..starts.len()).find(|&h| {
                let (from, to) = (starts[g], starts[h]);
                let (first, last) = (self.digits[from] as usize, self.digits[to - 1] as usize);
                (12..=19).contains(&(to - from))
                    && !letter(first.checked_sub(1))
                    && !letter(Some(last + 1))
                    && self.luhn_at(text, from, to)
            });
            match hit {
                Some(h) => {
                    found.push((starts[g], starts[h]));
                    g = h;
                }
                None => g += 1,
            }
        }
        found
    }
}

/// Replaces every place a card number could be in `text` with `[pan]`:
/// each run of 12–19 digits (optionally grouped by spaces or dashes), and
/// each longer run in which some 12–19 consecutive digits pass the Luhn
/// check. For text that leaves vigil unparsed — dead letters' copies of
/// rejected lines and their reasons — so it errs on the side of removing.
pub fn scrub_pans(text: &str) -> std::borrow::Cow<'_, str> {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    for run in long_runs(text) {
        if run.digits.len() <= 19 || run.hides_a_card_number(b) {
            out.push_str(&text[copied..run.start]);
            out.push_str("[pan]");
            copied = run.end;
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Whether a number written as `digits` could be a card number: 12 to 19
/// digits passing the Luhn check.
pub fn could_be_a_card_number(digits: &str) -> bool {
    (12..=19).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && luhn(digits.bytes())
}

impl Tokenizer {
    /// `text` with every card number in it (see `Run::card_numbers`)
    /// replaced by its token, or `None` when it holds none: how a field of
    /// an accepted event that is not the card (an id, an account, a free
    /// attribute) carries a card number no further. Tokens are stable, so
    /// the field still identifies the same thing.
    pub fn tokenise_pans(&self, text: &str) -> Option<String> {
        // Nearly every field: too few digits for a card number.
        if text.bytes().filter(u8::is_ascii_digit).count() < 12 {
            return None;
        }
        let b = text.as_bytes();
        let mut out = String::new();
        let mut copied = 0;
        for run in long_runs(text) {
            for (from, to) in run.card_numbers(b) {
                let (start, end) = (run.digits[from] as usize, run.digits[to - 1] as usize + 1);
                let digits: String = (from..to).map(|k| char::from(run.digit(b, k))).collect();
                out.push_str(&text[copied..start]);
                out.push_str(&self.token(&digits));
                copied = end;
            }
        }
        if copied == 0 {
            return None;
        }
        out.push_str(&text[copied..]);
        Some(out)
    }
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
        assert!(matches!(scrub_pans("ts 1714564800"), std::borrow::Cow::Borrowed(_)), "short numbers stay");
    }

    #[test]
    fn scrub_finds_a_card_number_glued_to_other_digits() {
        assert_eq!(scrub_pans("ref 2024 4111111111111111"), "ref [pan]");
        assert_eq!(scrub_pans("x 99994111111111111111 y"), "x [pan] y");
        assert_eq!(scrub_pans(r#"integer `4111111111111111`, expected"#), "integer `[pan]`, expected");
    }

    #[test]
    fn luhn_accepts_card_numbers_and_refuses_near_misses() {
        for pan in ["4111111111111111", "5500000000000004", "378282246310005", "6011111111111117"] {
            assert!(luhn(pan.bytes()), "{pan}");
        }
        for other in ["4111111111111112", "5500000000000005", "1234567890123"] {
            assert!(!luhn(other.bytes()), "{other}");
        }
    }

    #[test]
    fn accepted_fields_carry_tokens_in_place_of_card_numbers() {
        let t = Tokenizer::new(b"key-one-0123456789");
        let token = t.token("4111111111111111");
        assert_eq!(t.tokenise_pans("acct-4111111111111111").as_deref(), Some(&*format!("acct-{token}")));
        assert_eq!(t.tokenise_pans("4111 1111 1111 1111").as_deref(), Some(&*token));
        assert_eq!(t.tokenise_pans("ref 2024 4111111111111111").as_deref(), Some(&*format!("ref 2024 {token}")));
        // Not Luhn-valid, too short, or one long number: kept as written.
        assert_eq!(t.tokenise_pans("order 4111111111111112"), None);
        assert_eq!(t.tokenise_pans("acct-123456"), None);
        assert_eq!(t.tokenise_pans("2024050122001411111111111111"), None);
        assert_eq!(t.tokenise_pans("2da90c4111111111111111b3ebd3"), None, "inside a hex digest");
        assert_eq!(t.tokenise_pans("tx2-4111 1111 1111 1111").as_deref(), Some(&*format!("tx2-{token}")));
    }
}
