//! Parsing of `postgres://` URLs into a [`LakebaseConfig`].

use super::{LakebaseConfig, parse_port, parse_ssl_mode};
use crate::credentials::Credentials;
use crate::error::{ConfigError, ConfigProblem, Result};

const SHAPE: &str =
    "postgres://user[:password]@host[:port][/database][?sslmode=…&application_name=…]";

/// Parses `raw`; see [`LakebaseConfig::from_url`].
pub(super) fn parse(raw: &str) -> Result<LakebaseConfig> {
    let shown = redact_password(raw);
    let problem = |part: &str, value: Option<String>, expected: &str| {
        let name = if part.is_empty() {
            "url".to_owned()
        } else {
            format!("url {part}")
        };
        ConfigProblem::new(name, value, expected)
    };
    let url = match reqwest::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => url,
        _ => return Err(ConfigError::new(vec![problem("", Some(shown), SHAPE)]).into()),
    };
    let mut problems = Vec::new();
    let mut host = url.host_str().map(decode).filter(|h| !h.is_empty());
    let user = Some(decode(url.username())).filter(|u| !u.is_empty());
    let password = url.password().map(decode);
    let database = Some(decode(url.path().trim_start_matches('/'))).filter(|d| !d.is_empty());
    let mut builder = LakebaseConfig::builder("", "");
    if let Some(port) = url.port() {
        match parse_port(&port.to_string()) {
            Ok(port) => builder = builder.port(port),
            Err(expected) => problems.push(problem("port", Some(port.to_string()), expected)),
        }
    }
    for (key, value) in url.query_pairs() {
        match &*key {
            "sslmode" => match parse_ssl_mode(&value) {
                Ok(mode) => builder = builder.ssl_mode(mode),
                Err(expected) => {
                    problems.push(problem("sslmode", Some(value.into_owned()), expected))
                }
            },
            "application_name" => builder = builder.application_name(value),
            "host" => host = Some(value.into_owned()),
            // libpq's name and unit (whole seconds); here it bounds opening a connection
            // or waiting for a free one, as `LakebaseConfigBuilder::connect_timeout` does.
            "connect_timeout" => match value.parse::<u64>() {
                Ok(secs) if secs > 0 => {
                    builder = builder.connect_timeout(std::time::Duration::from_secs(secs));
                }
                _ => problems.push(problem(
                    "connect_timeout",
                    Some(value.into_owned()),
                    "a whole number of seconds, at least 1",
                )),
            },
            _ => problems.push(problem(
                "parameter",
                Some(key.into_owned()),
                "one of sslmode, application_name, connect_timeout, host",
            )),
        }
    }
    if host.is_none() {
        problems.push(problem(
            "host",
            None,
            "a host name, address or socket directory",
        ));
    }
    if user.is_none() {
        problems.push(problem("user", None, "the Postgres role name before @"));
    }
    let (Some(host), Some(user), true) = (host, user, problems.is_empty()) else {
        return Err(ConfigError::new(problems).into());
    };
    let mut config = builder.build();
    config.host = host;
    config.user = user;
    config.database = database;
    config.credentials = password.map_or_else(Credentials::none, Credentials::password);
    Ok(config)
}

/// Decodes `%XX` escapes; invalid escapes and non-UTF-8 results are kept as they are.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

/// The URL with its password replaced, for error messages.
fn redact_password(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some(super::REDACTED));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        // Unparseable: drop everything between "://" and the last '@', where a password hides.
        Err(_) => match (raw.find("://"), raw.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}{}{}", &raw[..start + 3], super::REDACTED, &raw[at..])
            }
            _ => raw.to_owned(),
        },
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
        assert_eq!(config.connect_timeout(), super::super::DEFAULT_CONNECT_TIMEOUT);
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
    }
}
