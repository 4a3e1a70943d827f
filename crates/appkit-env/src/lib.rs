//! Typed reading of environment variables that reports every bad variable at once.
//!
//! An [`Env`] reads variables through a lookup function (the process environment with
//! [`Env::process`], a map in tests with [`Env::new`]). Each typed getter returns
//! `Some(value)` for a good value and `None` when the variable is unset or bad; a bad value
//! is recorded as a [`Problem`] naming the variable, its value (secrets redacted) and the
//! expected form, and reading goes on. [`Env::finish`] then returns the configuration, or
//! every [`Problems`] found, so one start-up error lists them all. A set but bad value
//! never falls back silently to a default.
//!
//! # One set of rules for every variable
//!
//! - **Unset**: a variable that is missing, empty or only whitespace is unset; the
//!   default applies.
//! - **Whitespace** around a value is ignored, except for secrets, which are used as
//!   they are.
//! - **Booleans**: `true` or `false` (in any case), or `1` or `0`. Nothing else (not
//!   `yes`, `on`, …).
//! - **Whole numbers and byte sizes**: decimal digits within the type's range and at least
//!   the stated minimum. Byte sizes are whole bytes, at least 1.
//! - **Durations**: whole milliseconds (`…_MS` in AppKit's own names; OpenTelemetry's
//!   variables are milliseconds too), at least the stated minimum and at most
//!   [`MAX_MILLIS`] (about 31 years).
//! - **Choices**: one of the listed words, exactly (case-sensitive).
//! - **URLs**: parsed by the `url` crate; in a problem, a URL's password is shown as
//!   [`REDACTED_PASSWORD`].
//! - **`key=value` lists**: comma-separated, values percent-decoded (a `%` not followed by
//!   two hex digits stays as it is; a result that is not UTF-8 is a problem).
//! - **Secrets** are never shown: a problem shows [`REDACTED`].
//! - **Not UTF-8**: a problem.
//!
//! # Examples
//!
//! ```
//! use std::collections::HashMap;
//! use std::time::Duration;
//! use appkit_env::Env;
//!
//! let vars = HashMap::from([("PORT", "eighty"), ("DEBUG", "yes"), ("TIMEOUT_MS", "250")]);
//! let mut env = Env::new(|name| vars.get(name).map(|v| v.to_string()));
//! let port = env.port("PORT", 1).unwrap_or(8000);
//! let debug = env.bool("DEBUG").unwrap_or(false);
//! let timeout = env.millis("TIMEOUT_MS", 1).unwrap_or(Duration::from_secs(1));
//! assert_eq!(timeout, Duration::from_millis(250));
//! let err = env.finish((port, debug, timeout)).unwrap_err();
//! let message = err.to_string();
//! assert!(message.contains("PORT=\"eighty\"") && message.contains("DEBUG=\"yes\""));
//! ```

mod problem;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::ffi::OsString;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use problem::{Problem, Problems, REDACTED, REDACTED_PASSWORD, Shown, redact_url};
pub use url::Url;

/// What the lookup found for a variable.
enum Raw {
    Unset,
    Value(String),
    NotUnicode,
}

/// The longest duration [`Env::millis`] accepts: 10^12 ms, about 31 years. Longer values
/// are errors, so that deadlines computed from a duration (`now + duration`, in
/// milliseconds since 1970 or as an `Instant`) cannot overflow.
pub const MAX_MILLIS: u64 = 1_000_000_000_000;

/// Reads variables through a lookup and collects the [`Problems`] of bad ones.
pub struct Env<'a> {
    lookup: Box<dyn Fn(&str) -> Raw + 'a>,
    problems: Problems,
}

impl fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

impl Env<'static> {
    /// Reads the process environment; a value that is not UTF-8 is a problem.
    pub fn process() -> Self {
        Self::from_os(|name| std::env::var_os(name))
    }
}

impl<'a> Env<'a> {
    /// Reads through `lookup`: a variable's value, or `None` when it is unset.
    pub fn new(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self {
            lookup: Box::new(move |name| lookup(name).map_or(Raw::Unset, Raw::Value)),
            problems: Problems::new(),
        }
    }

    /// Reads through `lookup`, which may return values that are not UTF-8 (each one a
    /// problem).
    pub fn from_os(lookup: impl Fn(&str) -> Option<OsString> + 'a) -> Self {
        Self {
            lookup: Box::new(move |name| match lookup(name).map(OsString::into_string) {
                None => Raw::Unset,
                Some(Ok(value)) => Raw::Value(value),
                Some(Err(_)) => Raw::NotUnicode,
            }),
            problems: Problems::new(),
        }
    }

    /// The raw value of `name` when set (not empty, not only whitespace); records a
    /// value that is not UTF-8.
    fn raw(&mut self, name: &'static str, shown: Shown) -> Option<String> {
        match (self.lookup)(name) {
            Raw::Unset => None,
            Raw::Value(value) if value.trim().is_empty() => None,
            Raw::Value(value) => Some(value),
            Raw::NotUnicode => {
                self.problems.push(Problem::not_unicode(name, shown));
                None
            }
        }
    }

    /// Whether `name` is set (to a value that is not empty or only whitespace). Records
    /// nothing.
    pub fn is_set(&self, name: &str) -> bool {
        match (self.lookup)(name) {
            Raw::Unset => false,
            Raw::Value(value) => !value.trim().is_empty(),
            Raw::NotUnicode => true,
        }
    }

    /// The value of `name`, without surrounding whitespace.
    pub fn string(&mut self, name: &'static str) -> Option<String> {
        self.raw(name, Shown::Plain).map(|v| v.trim().to_owned())
    }

    /// The value of `name` as it is (a secret: never shown in a problem).
    pub fn secret(&mut self, name: &'static str) -> Option<String> {
        self.raw(name, Shown::Secret)
    }

    /// The value of `name` parsed by `parse`, which gets it without surrounding whitespace
    /// and returns the expected form when it rejects it.
    pub fn parse<T>(
        &mut self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        self.parse_shown(name, Shown::Plain, parse)
    }

    /// As [`parse`](Self::parse), showing a rejected value only as `shown` allows (a
    /// [`Shown::Secret`] value is passed on as it is, whitespace included).
    pub fn parse_shown<T>(
        &mut self,
        name: &'static str,
        shown: Shown,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = self.raw(name, shown)?;
        let value = match shown {
            Shown::Secret => raw.as_str(),
            Shown::Plain | Shown::Url => raw.trim(),
        };
        match parse(value) {
            Ok(value) => Some(value),
            Err(expected) => {
                self.problems
                    .push(Problem::invalid(name, &raw, shown, expected));
                None
            }
        }
    }

    /// A boolean: `true` or `false` in any case, or `1` or `0`.
    pub fn bool(&mut self, name: &'static str) -> Option<bool> {
        self.parse(name, |v| parse_bool(v).ok_or_else(|| BOOL.to_owned()))
    }

    /// A whole number from `min` to the largest `T`.
    pub fn number<T: Whole>(&mut self, name: &'static str, min: T) -> Option<T> {
        self.parse(name, |v| match v.parse::<T>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(format!("a whole number from {min} to {}", T::MAX)),
        })
    }

    /// A TCP port from `min` (0 or 1) to 65535.
    pub fn port(&mut self, name: &'static str, min: u16) -> Option<u16> {
        self.parse(name, |v| match v.parse::<u16>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(format!("a port number from {min} to 65535")),
        })
    }

    /// A duration in whole milliseconds, from `min_ms` to [`MAX_MILLIS`].
    pub fn millis(&mut self, name: &'static str, min_ms: u64) -> Option<Duration> {
        self.parse(name, |v| match v.parse::<u64>() {
            Ok(ms) if (min_ms..=MAX_MILLIS).contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "a whole number of milliseconds from {min_ms} to {MAX_MILLIS} (about 31 years)"
            )),
        })
    }

    /// A size in whole bytes, at least 1.
    pub fn bytes(&mut self, name: &'static str) -> Option<usize> {
        self.parse(name, |v| match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("a whole number of bytes, at least 1".to_owned()),
        })
    }

    /// One of `choices` (word, value), matched exactly.
    pub fn one_of<T: Clone>(&mut self, name: &'static str, choices: &[(&str, T)]) -> Option<T> {
        self.parse(name, |v| {
            choices
                .iter()
                .find(|(word, _)| *word == v)
                .map(|(_, value)| value.clone())
                .ok_or_else(|| choice_list(choices.iter().map(|(word, _)| *word)))
        })
    }

    /// An absolute URL with a host and one of `schemes` (see [`parse_url`]); a password
    /// in it is redacted in a problem.
    pub fn url(&mut self, name: &'static str, schemes: &[&str]) -> Option<Url> {
        self.parse_shown(name, Shown::Url, |v| parse_url(v, schemes))
    }

    /// Comma-separated `key=value` pairs with non-empty keys; values percent-decoded.
    /// Empty items are skipped.
    pub fn key_values(
        &mut self,
        name: &'static str,
        shown: Shown,
    ) -> Option<Vec<(String, String)>> {
        self.parse_shown(name, shown, |v| {
            parse_key_values(v).ok_or_else(|| {
                "comma-separated `key=value` pairs with non-empty keys and percent-encoded \
                 values, e.g. `k1=v1,k2=v2`"
                    .to_owned()
            })
        })
    }

    /// Records that `name` must be set, to the `expected` form, unless a problem about it
    /// is already recorded.
    pub fn require(&mut self, name: &'static str, expected: &str) {
        if !self.problems.names(name) {
            self.problems.push(Problem::missing(name, expected));
        }
    }

    /// Records a problem found by the caller (for example about two variables together).
    pub fn report(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Records every problem of `problems` (for example from reading a part of the
    /// configuration elsewhere).
    pub fn report_all(&mut self, problems: Problems) {
        self.problems.append(problems);
    }

    /// The problems recorded so far.
    pub fn problems(&self) -> &Problems {
        &self.problems
    }

    /// `Ok(value)` when no problem was recorded.
    ///
    /// # Errors
    ///
    /// Every problem recorded, when there is one.
    pub fn finish<T>(self, value: T) -> Result<T, Problems> {
        self.problems.into_result(value)
    }
}

const BOOL: &str = "`true` or `false` (or `1` or `0`)";

/// `true`/`false` in any case, `1`/`0`.
fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") || v == "1" {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") || v == "0" {
        Some(false)
    } else {
        None
    }
}

/// "`a`, `b` or `c`".
fn choice_list<'w>(words: impl Iterator<Item = &'w str>) -> String {
    let words: Vec<String> = words.map(|w| format!("`{w}`")).collect();
    match words.split_last() {
        None => "nothing (no choice is allowed)".to_owned(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Parses an absolute URL with a host whose scheme is one of `schemes`; the error is the
/// expected form.
///
/// # Errors
///
/// The expected form, when `value` is not such a URL.
///
/// # Examples
///
/// ```
/// let url = appkit_env::parse_url("http://collector:4318", &["http", "https"]).unwrap();
/// assert_eq!(url.host_str(), Some("collector"));
/// assert!(appkit_env::parse_url("collector:4318", &["http", "https"]).is_err());
/// ```
pub fn parse_url(value: &str, schemes: &[&str]) -> Result<Url, String> {
    match Url::parse(value) {
        Ok(url)
            if schemes.contains(&url.scheme()) && url.host_str().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(url)
        }
        _ => Err(url_expected(schemes)),
    }
}

fn url_expected(schemes: &[&str]) -> String {
    let example = schemes.first().copied().unwrap_or("https");
    format!(
        "an absolute URL with a host and scheme {}, e.g. `{example}://host:port`",
        choice_list(schemes.iter().copied())
    )
}

/// `k=v,k2=v2` with percent-decoded values; `None` when malformed.
fn parse_key_values(input: &str) -> Option<Vec<(String, String)>> {
    input
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (key, value) = item.split_once('=')?;
            let key = key.trim();
            if key.is_empty() {
                return None;
            }
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .ok()?;
            Some((key.to_owned(), value.into_owned()))
        })
        .collect()
}

mod sealed {
    pub trait Sealed {}
}

/// The unsigned integer types [`Env::number`] reads: `u16`, `u32`, `u64`, `usize`.
pub trait Whole: sealed::Sealed + FromStr + PartialOrd + fmt::Display + Copy {
    /// The largest value.
    const MAX: Self;
}

macro_rules! whole {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Whole for $t {
            const MAX: Self = <$t>::MAX;
        }
    )*};
}
whole!(u16, u32, u64, usize);

#[cfg(test)]
mod tests;
