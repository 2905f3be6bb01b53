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
    #[inline]
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
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Reasons {
    inline: [&'static str; INLINE],
    len: usize,
    spilled: Vec<Cow<'static, str>>,
}

impl Reasons {
    /// Adds a code.
    #[inline]
    pub fn push(&mut self, code: Cow<'static, str>) {
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
    fn many_literals_spill_in_order() {
        let mut d = Decision::review(1);
        for r in ["1", "2", "3", "4", "5", "6"] {
            d = d.reason(r);
        }
        assert_eq!(d.reasons, ["1", "2", "3", "4", "5", "6"]);
    }
}
