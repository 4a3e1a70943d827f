//! What is reported about bad variables, and how values are shown in the report.

use std::borrow::Cow;
use std::fmt;

use url::Url;

/// What a secret value is shown as, in place of the value.
pub const REDACTED: &str = "<redacted>";

/// What a URL's password is shown as inside the URL (the `url` crate would percent-encode
/// the `<` and `>` of [`REDACTED`]).
pub const REDACTED_PASSWORD: &str = "***";

/// What a value that is not valid UTF-8 is shown as.
const NOT_UNICODE: &str = "<not valid UTF-8>";

/// How a variable's value may be shown in a [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Shown {
    /// As it is.
    #[default]
    Plain,
    /// As a URL whose password (and `password` query parameter) is replaced by
    /// [`REDACTED_PASSWORD`] (see [`redact_url`]).
    Url,
    /// Never: the value is a secret and is shown as [`REDACTED`].
    Secret,
}

impl Shown {
    /// `value` as it may be shown.
    pub fn show(self, value: &str) -> String {
        match self {
            Self::Plain => value.to_owned(),
            Self::Url => redact_url(value),
            Self::Secret => REDACTED.to_owned(),
        }
    }
}

/// `value` with a URL's password replaced by [`REDACTED_PASSWORD`], for messages.
///
/// The URL is parsed by the `url` crate; its userinfo password and any `password` query
/// parameter are replaced. A value that does not parse as a URL with an authority
/// (`scheme://…`) is shown whole unless, after its `://`, it holds a `:` or an `@` (where
/// a password could start or end): then the whole value is [`REDACTED`].
///
/// # Examples
///
/// ```
/// use appkit_env::redact_url;
/// assert_eq!(redact_url("postgres://app:hunter2@db/main"), "postgres://app:***@db/main");
/// assert_eq!(redact_url("postgres://app:hunter2@db:port/main"), "<redacted>");
/// assert_eq!(redact_url("sqlite://tasks.db"), "sqlite://tasks.db");
/// ```
pub fn redact_url(value: &str) -> String {
    let parsed = Url::parse(value).ok().filter(|url| !url.cannot_be_a_base());
    let Some(mut url) = parsed else {
        // No authority the parser understood: a `:` may start a password (`user:secret`
        // without `@host`) and an `@` may end one.
        let rest = value.split_once("://").map_or(value, |(_, rest)| rest);
        return if rest.contains([':', '@']) {
            REDACTED.to_owned()
        } else {
            value.to_owned()
        };
    };
    let mut changed = false;
    if url.password().is_some() {
        // Fails only for URLs that cannot have a password, which then have none.
        changed |= url.set_password(Some(REDACTED_PASSWORD)).is_ok();
    }
    let has_password_parameter = url
        .query_pairs()
        .any(|(key, _)| key.eq_ignore_ascii_case("password"));
    if has_password_parameter {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if key.eq_ignore_ascii_case("password") {
                    REDACTED_PASSWORD.to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    // Unchanged: show the value as written rather than the parser's normal form.
    if changed {
        url.into()
    } else {
        value.to_owned()
    }
}

/// One bad or missing variable: its name, its value as it may be shown, and the form it
/// should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    variable: Cow<'static, str>,
    value: Option<String>,
    expected: String,
}

impl Problem {
    /// `variable` is set to `value`, which is not of the `expected` form; the value is
    /// kept only as `shown` allows.
    pub fn invalid(
        variable: impl Into<Cow<'static, str>>,
        value: &str,
        shown: Shown,
        expected: impl Into<String>,
    ) -> Self {
        Self {
            variable: variable.into(),
            value: Some(shown.show(value)),
            expected: expected.into(),
        }
    }

    /// `variable` is not set, and must be, to the `expected` form.
    pub fn missing(variable: impl Into<Cow<'static, str>>, expected: impl Into<String>) -> Self {
        Self {
            variable: variable.into(),
            value: None,
            expected: expected.into(),
        }
    }

    /// `variable` is set but not valid UTF-8.
    pub(crate) fn not_unicode(variable: &'static str, shown: Shown) -> Self {
        let value = match shown {
            Shown::Secret => REDACTED,
            Shown::Plain | Shown::Url => NOT_UNICODE,
        };
        Self {
            variable: variable.into(),
            value: Some(value.to_owned()),
            expected: "valid UTF-8".to_owned(),
        }
    }

    /// The variable's name (or, for a part of a URL, a name such as `url port`).
    pub fn variable(&self) -> &str {
        &self.variable
    }

    /// The value as it may be shown (secrets [`REDACTED`]), or `None` when it was not set.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// The form the value should have.
    pub fn expected(&self) -> &str {
        &self.expected
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value:?}: expected {}", self.variable, self.expected),
            None => write!(
                f,
                "{} is not set: expected {}",
                self.variable, self.expected
            ),
        }
    }
}

/// Every bad or missing variable found, in the order they were read; its message names
/// each one.
///
/// A problem equal in variable and shown value to one already listed is listed once (two
/// readers of the same variable report it once).
///
/// # Examples
///
/// ```
/// use appkit_env::{Problem, Problems, Shown};
/// let mut problems = Problems::new();
/// problems.push(Problem::invalid("PORT", "eighty", Shown::Plain, "a port number"));
/// problems.push(Problem::missing("PGHOST", "a host name"));
/// assert_eq!(
///     problems.to_string(),
///     "invalid configuration: PORT=\"eighty\": expected a port number; \
///      PGHOST is not set: expected a host name"
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", join(.0))]
pub struct Problems(Vec<Problem>);

fn join(problems: &[Problem]) -> String {
    let parts: Vec<String> = problems.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

impl Problems {
    /// No problems.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `problem`, unless the same variable with the same shown value is listed.
    pub fn push(&mut self, problem: Problem) {
        let known = self
            .0
            .iter()
            .any(|p| p.variable == problem.variable && p.value == problem.value);
        if !known {
            self.0.push(problem);
        }
    }

    /// Adds every problem of `other` (see [`push`](Self::push)).
    pub fn append(&mut self, other: Problems) {
        for problem in other.0 {
            self.push(problem);
        }
    }

    /// The problems, in the order they were found.
    pub fn problems(&self) -> &[Problem] {
        &self.0
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether a problem about `variable` is listed.
    pub fn names(&self, variable: &str) -> bool {
        self.0.iter().any(|p| p.variable == variable)
    }

    /// `Ok(value)` when there is no problem, else `Err(self)`.
    ///
    /// # Errors
    ///
    /// `self`, when it lists a problem.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<Problem> for Problems {
    fn from(problem: Problem) -> Self {
        Self(vec![problem])
    }
}

impl FromIterator<Problem> for Problems {
    fn from_iter<I: IntoIterator<Item = Problem>>(iter: I) -> Self {
        let mut problems = Self::new();
        for problem in iter {
            problems.push(problem);
        }
        problems
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
