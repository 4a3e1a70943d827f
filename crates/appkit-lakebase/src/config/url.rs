//! Parsing of `postgres://` URLs into a [`LakebaseConfig`].

use appkit_env::{Problem, Problems, Shown, Url};
use percent_encoding::percent_decode_str;

use super::{LakebaseConfig, parse_ssl_mode};
use crate::credentials::Credentials;
use crate::error::Result;

const SHAPE: &str =
    "postgres://user[:password]@host[:port][/database][?sslmode=…&application_name=…]";

/// Parses `raw`; see [`LakebaseConfig::from_url`]. Problems name the part of the URL
/// (`url port`, `url sslmode`, …); the password is never shown.
pub(super) fn parse(raw: &str) -> Result<LakebaseConfig> {
    let url = match Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") && !url.cannot_be_a_base() => {
            url
        }
        _ => return Err(Problems::from(Problem::invalid("url", raw, Shown::Url, SHAPE)).into()),
    };
    let mut problems = Problems::new();
    // `None`: a part that did not decode (reported); empty: a part that is missing.
    let mut host = match url.host_str() {
        Some(h) => decode("url host", h, Shown::Plain, &mut problems),
        None => Some(String::new()),
    };
    let user = decode("url user", url.username(), Shown::Plain, &mut problems);
    let password = url
        .password()
        .and_then(|p| decode("url password", p, Shown::Secret, &mut problems));
    let database = decode(
        "url database",
        url.path().trim_start_matches('/'),
        Shown::Plain,
        &mut problems,
    )
    .filter(|d| !d.is_empty());
    let mut builder = LakebaseConfig::builder("", "");
    match url.port() {
        Some(0) => problems.push(Problem::invalid(
            "url port",
            "0",
            Shown::Plain,
            "a port number from 1 to 65535",
        )),
        Some(port) => builder = builder.port(port),
        None => {}
    }
    for (key, value) in url.query_pairs() {
        match &*key {
            "sslmode" => match parse_ssl_mode(&value) {
                Ok(mode) => builder = builder.ssl_mode(mode),
                Err(expected) => problems.push(Problem::invalid(
                    "url sslmode",
                    &value,
                    Shown::Plain,
                    expected,
                )),
            },
            "application_name" => builder = builder.application_name(value),
            "host" => host = Some(value.into_owned()),
            // libpq's name and unit (whole seconds); here it bounds opening a connection
            // or waiting for a free one, as `LakebaseConfigBuilder::connect_timeout` does.
            "connect_timeout" => match value.parse::<u64>() {
                Ok(secs) if secs > 0 => {
                    builder = builder.connect_timeout(std::time::Duration::from_secs(secs));
                }
                _ => problems.push(Problem::invalid(
                    "url connect_timeout",
                    &value,
                    Shown::Plain,
                    "a whole number of seconds, at least 1",
                )),
            },
            _ => problems.push(Problem::invalid(
                "url parameter",
                &key,
                Shown::Plain,
                "one of sslmode, application_name, connect_timeout, host",
            )),
        }
    }
    if host.as_deref() == Some("") {
        problems.push(Problem::missing(
            "url host",
            "a host name, address or socket directory",
        ));
    }
    if user.as_deref() == Some("") {
        problems.push(Problem::missing(
            "url user",
            "the Postgres role name before @",
        ));
    }
    let (Some(host), Some(user), true) = (host, user, problems.is_empty()) else {
        return Err(problems.into());
    };
    let mut config = builder.build();
    config.host = host;
    config.user = user;
    config.database = database;
    config.credentials = password.map_or_else(Credentials::none, Credentials::password);
    Ok(config)
}

/// Decodes `%XX` escapes (a `%` without two hex digits stays as it is); a result that
/// is not UTF-8 is a problem about `part`.
fn decode(part: &'static str, s: &str, shown: Shown, problems: &mut Problems) -> Option<String> {
    match percent_decode_str(s).decode_utf8() {
        Ok(decoded) => Some(decoded.into_owned()),
        Err(_) => {
            problems.push(Problem::invalid(part, s, shown, "percent-encoded UTF-8"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CredentialKind;
    use sqlx::postgres::PgSslMode;

    #[test]
    fn url_parts_become_config_values() {
        let config =
            parse("postgres://app%40x:p%2Fw@db.example.com:6543/main?sslmode=verify-full&application_name=svc")
                .unwrap();
        assert_eq!(config.host(), "db.example.com");
        assert_eq!(config.port(), 6543);
        assert_eq!(config.user(), "app@x");
        assert_eq!(config.database(), Some("main"));
        assert!(matches!(config.ssl_mode(), PgSslMode::VerifyFull));
        assert_eq!(config.application_name(), Some("svc"));
        assert_eq!(config.credentials().kind(), CredentialKind::Password);
        assert_eq!(
            config.connect_timeout(),
            super::super::DEFAULT_CONNECT_TIMEOUT
        );
        let config = parse("postgres://u@h/db?connect_timeout=3").unwrap();
        assert_eq!(config.connect_timeout(), std::time::Duration::from_secs(3));
        for bad in ["0", "-1", "1.5", "x"] {
            let err = parse(&format!("postgres://u@h/db?connect_timeout={bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("url connect_timeout"), "{err}");
        }
    }

    #[test]
    fn url_without_password_or_port_uses_defaults() {
        let config = parse("postgresql://postgres@127.0.0.1/test").unwrap();
        assert_eq!(config.port(), 5432);
        assert_eq!(config.credentials().kind(), CredentialKind::None);
        let config = parse("postgres://u@%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(config.host(), "/var/run/postgresql");
    }

    #[test]
    fn bad_urls_name_each_problem_and_hide_the_password() {
        let err = parse("postgres://u:hunter2@h:abc/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("url") && !err.contains("hunter2"), "{err}");
        let err = parse("postgres://u:hunter2@h/db?sslmode=sometimes&x=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("url sslmode=\"sometimes\""), "{err}");
        assert!(err.contains("url parameter=\"x\""), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse("mysql://u@h/db").unwrap_err().to_string();
        assert!(err.contains("postgres://user"), "{err}");
        let err = parse("postgres://h/db").unwrap_err().to_string();
        assert!(err.contains("url user is not set"), "{err}");
        let err = parse("postgres://u:%FF%FE@h/db").unwrap_err().to_string();
        assert!(
            err.contains("url password=\"<redacted>\"") && !err.contains("%FF"),
            "{err}"
        );
    }
}
