//! The resume cursor: the `Last-Event-ID` request header.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

/// The seq a client last saw, from `Last-Event-ID`; the stream resumes after it.
///
/// Only an unsigned decimal integer counts (surrounding whitespace allowed); anything else,
/// or no header, is no cursor. It never fails as an extractor.
///
/// # Examples
///
/// ```
/// use appkit::LastEventId;
/// assert_eq!(LastEventId::parse(" 42 ").0, Some(42));
/// assert_eq!(LastEventId::parse("-1").0, None);
/// assert_eq!(LastEventId::parse("abc").0, None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastEventId(pub Option<u64>);

impl LastEventId {
    /// Parses a header value.
    pub fn parse(value: &str) -> Self {
        let value = value.trim();
        let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        Self(digits.then(|| value.parse().ok()).flatten())
    }

    /// Reads the cursor from request headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(Self::parse)
            .unwrap_or_default()
    }

    /// The seq to resume after: 0 (from the start) without a cursor.
    pub fn after_seq(self) -> u64 {
        self.0.unwrap_or(0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Self::from_headers(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unsigned_integers_are_cursors() {
        for (raw, want) in [
            ("7", Some(7)),
            ("  7\t", Some(7)),
            ("007", Some(7)),
            ("", None),
            ("+7", None),
            ("7.0", None),
            ("1e3", None),
            ("18446744073709551616", None),
            ("18446744073709551615", Some(u64::MAX)),
            ("٣", None),
        ] {
            assert_eq!(LastEventId::parse(raw).0, want, "{raw:?}");
        }
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn every_u64_with_any_surrounding_whitespace_is_a_cursor(n in any::<u64>(), pad in "[ \t]{0,3}") {
                prop_assert_eq!(LastEventId::parse(&format!("{pad}{n}{pad}")).0, Some(n));
            }

            #[test]
            fn anything_else_is_no_cursor_and_never_panics(s in "\\PC{0,24}") {
                let parsed = LastEventId::parse(&s).0;
                let trimmed = s.trim();
                let digits = !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit());
                if !digits {
                    prop_assert_eq!(parsed, None);
                }
                prop_assert_eq!(parsed.map(|n| n.to_string().parse::<u64>().unwrap()), parsed);
            }

            #[test]
            fn numbers_past_u64_and_signed_or_fractional_ones_are_refused(n in any::<u64>()) {
                prop_assert_eq!(LastEventId::parse(&format!("{n}0000000000000000000000")).0, None);
                prop_assert_eq!(LastEventId::parse(&format!("-{n}")).0, None);
                prop_assert_eq!(LastEventId::parse(&format!("+{n}")).0, None);
                prop_assert_eq!(LastEventId::parse(&format!("{n}.0")).0, None);
                prop_assert_eq!(LastEventId::parse(&format!("{n:x}h")).0, None);
            }
        }
    }
}
