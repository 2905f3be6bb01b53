//! What a rule returns.

use std::borrow::Cow;
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
    pub reasons: Vec<Cow<'static, str>>,
}

impl Decision {
    /// Let the payment through, score 0.
    pub fn allow() -> Self {
        Self::default()
    }

    /// Send the payment to a human, with `score` risk points.
    pub fn review(score: i32) -> Self {
        Self {
            action: Action::Review,
            score,
            reasons: Vec::new(),
        }
    }

    /// Stop the payment, with `score` risk points.
    pub fn block(score: i32) -> Self {
        Self {
            action: Action::Block,
            score,
            reasons: Vec::new(),
        }
    }

    /// Adds a reason code.
    pub fn reason(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.reasons.push(code.into());
        self
    }

    /// Sets the score.
    pub fn score(mut self, score: i32) -> Self {
        self.score = score;
        self
    }
}
