//! The user context extractor, built from the platform proxy's forwarded headers.

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::error::Error;

/// The user id development mode stands in for a request without one.
pub const DEV_USER_ID: &str = "dev-user";

const USER: &str = "x-forwarded-user";
const EMAIL: &str = "x-forwarded-email";
const TOKEN: &str = "x-forwarded-access-token";
const PREFERRED_USERNAME: &str = "x-forwarded-preferred-username";

/// A user extractor an app installs with
/// [`AppBuilder::user_extractor`](crate::AppBuilder::user_extractor): it reads the
/// request's user from the request head (`Ok(None)` when there is none) instead of the
/// forwarded headers.
pub type UserExtractor =
    Arc<dyn Fn(&Parts) -> Result<Option<UserContext>, Error> + Send + Sync + 'static>;

/// How the host treats identity headers; put in the request extensions by the host.
#[derive(Clone)]
pub(crate) struct RequestPolicy {
    pub(crate) production: bool,
    pub(crate) trust_forwarded_user: bool,
    pub(crate) extractor: Option<UserExtractor>,
}

impl fmt::Debug for RequestPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestPolicy")
            .field("production", &self.production)
            .field("trust_forwarded_user", &self.trust_forwarded_user)
            .field("extractor", &self.extractor.is_some())
            .finish()
    }
}

/// The user a request is made for, from `X-Forwarded-User`, `X-Forwarded-Email`,
/// `X-Forwarded-Access-Token` and `X-Forwarded-Preferred-Username`.
///
/// As an extractor it answers 401 in production when the request carries no user; in
/// development a fixed local user ([`DEV_USER_ID`]) stands in. Use `Option<UserContext>`
/// for routes that work without a user. The headers are only read when they are trusted
/// (`APPKIT_TRUST_FORWARDED_USER`; unset, trusted in development and on Databricks Apps,
/// whose proxy strips client-sent copies). An app can install its own way of finding the
/// user instead ([`AppBuilder::user_extractor`](crate::AppBuilder::user_extractor)).
///
/// # Examples
///
/// ```
/// use appkit::UserContext;
/// async fn whoami(user: UserContext) -> String {
///     user.id().to_owned()
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(whoami);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct UserContext {
    inner: Arc<Inner>,
}

#[derive(PartialEq, Eq)]
struct Inner {
    id: String,
    email: Option<String>,
    preferred_username: Option<String>,
    access_token: Option<String>,
    local: bool,
}

impl fmt::Debug for UserContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserContext")
            .field("id", &self.inner.id)
            .field("email", &self.inner.email)
            .field("preferred_username", &self.inner.preferred_username)
            .field(
                "access_token",
                &self.inner.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("local", &self.inner.local)
            .finish()
    }
}

impl UserContext {
    /// A user with this id and nothing else; for tests and background work.
    pub fn new(id: impl Into<String>) -> Self {
        Self::build(id.into(), None, None, None, false)
    }

    fn build(
        id: String,
        email: Option<String>,
        preferred_username: Option<String>,
        access_token: Option<String>,
        local: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                id,
                email,
                preferred_username,
                access_token,
                local,
            }),
        }
    }

    /// The same user with this e-mail.
    #[must_use]
    pub fn with_email(self, email: impl Into<String>) -> Self {
        self.with(|i| i.email = Some(email.into()))
    }

    /// The same user with this preferred name.
    #[must_use]
    pub fn with_preferred_username(self, name: impl Into<String>) -> Self {
        self.with(|i| i.preferred_username = Some(name.into()))
    }

    /// The same user with this access token (never persisted).
    #[must_use]
    pub fn with_access_token(self, token: impl Into<String>) -> Self {
        self.with(|i| i.access_token = Some(token.into()))
    }

    fn with(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            id: shared.id.clone(),
            email: shared.email.clone(),
            preferred_username: shared.preferred_username.clone(),
            access_token: shared.access_token.clone(),
            local: shared.local,
        });
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The user's id (`X-Forwarded-User`); tasks are owned by it.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The user's e-mail (`X-Forwarded-Email`).
    pub fn email(&self) -> Option<&str> {
        self.inner.email.as_deref()
    }

    /// The user's preferred name (`X-Forwarded-Preferred-Username`).
    pub fn preferred_username(&self) -> Option<&str> {
        self.inner.preferred_username.as_deref()
    }

    /// The user's access token (`X-Forwarded-Access-Token`). Never persisted.
    pub fn access_token(&self) -> Option<&str> {
        self.inner.access_token.as_deref()
    }

    /// `true` for the stand-in development user.
    pub fn is_local_dev(&self) -> bool {
        self.inner.local
    }

    /// Reads the user from `headers`: `Ok(None)` when there is none.
    fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, Error> {
        let Some(id) = header(headers, USER)? else {
            return Ok(None);
        };
        Ok(Some(Self::build(
            id,
            header(headers, EMAIL)?,
            header(headers, PREFERRED_USERNAME)?,
            header(headers, TOKEN)?,
            false,
        )))
    }

    fn resolve(parts: &Parts) -> Result<Option<Self>, Error> {
        let policy = parts
            .extensions
            .get::<RequestPolicy>()
            .ok_or_else(|| Error::Internal("UserContext used outside the appkit host".into()))?;
        let found = if let Some(extract) = &policy.extractor {
            extract(parts)?
        } else if policy.trust_forwarded_user {
            Self::from_headers(&parts.headers)?
        } else {
            None
        };
        Ok(match found {
            Some(user) => Some(user),
            None if policy.production => None,
            None => Some(Self::build(DEV_USER_ID.to_owned(), None, None, None, true)),
        })
    }
}

/// A non-empty, visible-ASCII header value, or `None` when absent or empty.
fn header(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, Error> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Error::InvalidInput(format!("header {name} is not visible ASCII")))?
        .trim();
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

impl<S: Send + Sync> FromRequestParts<S> for UserContext {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        Self::resolve(parts)?.ok_or(Error::Unauthorized)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for UserContext {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Error> {
        Self::resolve(parts)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts(production: bool, trust: bool, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder();
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        parts.extensions.insert(RequestPolicy {
            production,
            trust_forwarded_user: trust,
            extractor: None,
        });
        parts
    }

    #[test]
    fn forwarded_headers_make_the_user() {
        let p = parts(
            true,
            true,
            &[
                ("X-Forwarded-User", "u-1"),
                ("X-Forwarded-Email", "a@example.com"),
                ("X-Forwarded-Access-Token", "secret"),
            ],
        );
        let user = UserContext::resolve(&p).unwrap().unwrap();
        assert_eq!(user.id(), "u-1");
        assert_eq!(user.email(), Some("a@example.com"));
        assert_eq!(user.access_token(), Some("secret"));
        assert!(!format!("{user:?}").contains("secret"));
    }

    #[test]
    fn production_without_user_has_none_and_development_has_the_local_user() {
        assert!(
            UserContext::resolve(&parts(true, true, &[]))
                .unwrap()
                .is_none()
        );
        let dev = UserContext::resolve(&parts(false, true, &[]))
            .unwrap()
            .unwrap();
        assert_eq!(dev.id(), DEV_USER_ID);
        assert!(dev.is_local_dev());
    }

    #[test]
    fn untrusted_headers_are_ignored() {
        let p = parts(true, false, &[("X-Forwarded-User", "mallory")]);
        assert!(UserContext::resolve(&p).unwrap().is_none());
    }

    #[test]
    fn an_installed_extractor_replaces_the_forwarded_headers() {
        let mut p = parts(true, true, &[("X-Forwarded-User", "mallory")]);
        let extractor: UserExtractor = Arc::new(|parts: &Parts| {
            Ok(parts
                .headers
                .get("x-session")
                .map(|_| UserContext::new("from-session").with_access_token("t")))
        });
        p.extensions.insert(RequestPolicy {
            production: true,
            trust_forwarded_user: true,
            extractor: Some(extractor.clone()),
        });
        assert!(UserContext::resolve(&p).unwrap().is_none());
        p.headers.insert("x-session", "1".parse().unwrap());
        let user = UserContext::resolve(&p).unwrap().unwrap();
        assert_eq!(
            (user.id(), user.access_token()),
            ("from-session", Some("t"))
        );
    }
}
