//! What a rule returns.

use std::borrow::Cow;
use std::fmt;
use vigil_abi::Action;

/// A rule's verdict on one payment: an action, a score, and reason codes.
///
/// ```
/// use vigil_sdk::Decision;
/// let d = Decision::review(40).reason("velocity").reason("new_device");
/// assert_eq!(d.reasons, ["velocity", "new_device"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use]
pub struct Decision {
    /// Allow, review or block.
    pub action: Action,
    /// Risk points; the host sums them over enforcing rules.
    pub score: i32,
    /// Short machine-readable codes saying why (no spaces or newlines).
    pub reasons: Reasons,
}

impl Decision {
    /// Let the payment through, score 0.
    #[inline]
    pub fn allow() -> Self {
        Self::default()
    }

    /// Send the payment to a human, with `score` risk points.
    #[inline]
    pub fn review(score: i32) -> Self {
        Self { action: Action::Review, score, reasons: Reasons::default() }
    }

    /// Stop the payment, with `score` risk points.
    #[inline]
    pub fn block(score: i32) -> Self {
        Self { action: Action::Block, score, reasons: Reasons::default() }
    }

    /// Adds a reason code.
    // Always inlined: the decision is moved in and out by value, which
    // only vanishes inlined, and a literal's newline check folds there.
    #[inline(always)]
    pub fn reason(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.reasons.push(code.into());
        self
    }

    /// Sets the score.
    #[inline]
    pub fn score(mut self, score: i32) -> Self {
        self.score = score;
        self
    }
}

const INLINE: usize = 4;

/// Reason codes in the order given. Up to four literal codes are held
/// without allocating, which keeps a firing rule cheap inside the sandbox.
///
/// A newline in a code would split it in two on its way to the host, so
/// each newline is stored as a space.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Reasons {
    inline: [&'static str; INLINE],
    len: usize,
    spilled: Vec<Cow<'static, str>>,
}

impl Reasons {
    /// Adds a code, with any newline in it made a space.
    #[inline(always)]
    pub fn push(&mut self, code: Cow<'static, str>) {
        // Inlined into the rule, the check of a literal code is done at
        // compile time; at run time it cost a firing rule a tenth of its call.
        let code = if has_newline(code.as_bytes()) { blank_newlines(code) } else { code };
        match code {
            Cow::Borrowed(s) if self.len < INLINE && self.spilled.is_empty() => {
                self.inline[self.len] = s;
                self.len += 1;
            }
            other => self.spill(other),
        }
    }

    // Out of line, so the common case above inlines into the rule.
    #[cold]
    #[inline(never)]
    fn spill(&mut self, code: Cow<'static, str>) {
        self.spilled.push(code);
    }

    /// The codes, in order.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.inline[..self.len].iter().copied().chain(self.spilled.iter().map(|c| c.as_ref()))
    }

    /// How many codes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len + self.spilled.len()
    }

    /// Whether there are none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cold]
#[inline(never)]
fn blank_newlines(code: Cow<'static, str>) -> Cow<'static, str> {
    Cow::Owned(code.replace('\n', " "))
}

/// Whether `bytes` holds a `\n`: the "has a zero byte" test on each eight
/// bytes XOR-ed with newlines (a byte loop costs several instructions a
/// byte in wasm).
#[inline(always)]
fn has_newline(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in chunks.by_ref() {
        let x = u64::from_ne_bytes(chunk.try_into().unwrap_or_default()) ^ NEWLINES;
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            return true;
        }
    }
    chunks.remainder().contains(&b'\n')
}

impl fmt::Debug for Reasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<const N: usize> PartialEq<[&str; N]> for Reasons {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.len() == N && self.iter().zip(other).all(|(a, b)| a == *b)
    }
}

impl PartialEq<[&str]> for Reasons {
    fn eq(&self, other: &[&str]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_kept_across_inline_and_spilled_codes() {
        let d =
            Decision::block(1).reason("a").reason(format!("dyn{}", 1)).reason("b").reason("c").reason("d").reason("e");
        assert_eq!(d.reasons, ["a", "dyn1", "b", "c", "d", "e"]);
        assert_eq!(d.reasons.len(), 6);
    }

    #[test]
    fn newlines_in_codes_become_spaces() {
        let d = Decision::review(1).reason("new\ndevice").reason(String::from("a\nb\n")).reason("plain");
        assert_eq!(d.reasons, ["new device", "a b ", "plain"]);
    }

    #[test]
    fn newlines_are_found_at_any_position() {
        for len in 0..20 {
            let clean = vec![b'a'; len];
            assert!(!has_newline(&clean), "none in {len} bytes");
            for at in 0..len {
                let mut with = clean.clone();
                with[at] = b'\n';
                assert!(has_newline(&with), "at {at} of {len}");
            }
        }
        // Bytes one bit away from a newline are not newlines.
        assert!(!has_newline(&[0x0b, 0x0e, 0x08, 0x8a, 0x1a, 0x4a, 0x2a, 0x0a ^ 0x01, 0x0a ^ 0x80]));
    }

    #[test]
    fn many_literals_spill_in_order() {
        let mut d = Decision::review(1);
        for r in ["1", "2", "3", "4", "5", "6"] {
            d = d.reason(r);
        }
        assert_eq!(d.reasons, ["1", "2", "3", "4", "5", "6"]);
    }
}
