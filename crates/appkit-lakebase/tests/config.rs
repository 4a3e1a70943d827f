//! Configuration parsing: every bad variable is named, nothing falls back silently, secrets
//! stay hidden.

use std::time::Duration;

use appkit_lakebase::{CredentialKind, Error, LakebaseConfig, PgSslMode};

const BASE: [(&str, &str); 2] = [("PGHOST", "db.example.com"), ("PGUSER", "app")];

fn parse(extra: &[(&str, &str)]) -> Result<LakebaseConfig, Error> {
    LakebaseConfig::from_vars(BASE.iter().chain(extra).copied())
}

fn problems(err: Error) -> Vec<(String, Option<String>)> {
    let Error::Config(config) = err else {
        panic!("expected a config error, got {err:?}");
    };
    config
        .problems()
        .iter()
        .map(|p| (p.variable().to_owned(), p.value().map(str::to_owned)))
        .collect()
}

#[test]
fn every_bad_variable_is_named_with_its_value() {
    let err = LakebaseConfig::from_vars([
        ("PGPORT", "abc"),
        ("PGSSLMODE", "sometimes"),
        ("DATABRICKS_CLIENT_ID", "sp"),
        ("DATABRICKS_CLIENT_SECRET", "hidden"),
        ("DATABRICKS_HOST", "ftp://nope"),
    ])
    .unwrap_err();
    let message = err.to_string();
    let found = problems(err);
    let expected = [
        ("PGHOST", None),
        ("PGUSER", None),
        ("PGPORT", Some("abc")),
        ("PGSSLMODE", Some("sometimes")),
        ("LAKEBASE_INSTANCE_NAME", None),
        ("DATABRICKS_HOST", Some("ftp://nope")),
    ];
    for (var, value) in expected {
        let want = (var.to_owned(), value.map(str::to_owned));
        assert!(found.contains(&want), "missing {want:?} in {found:?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:?}");
    assert!(
        message.contains("PGPORT=\"abc\": expected a port number from 1 to 65535"),
        "{message}"
    );
    assert!(message.contains("PGHOST is not set: expected"), "{message}");
    assert!(
        message.contains("one of disable, allow, prefer, require, verify-ca, verify-full"),
        "{message}"
    );
}

#[test]
fn pgport_abc_is_an_error_never_5432() {
    for bad in ["abc", "0", "65536", "-1", "5 432", "5432x"] {
        let err = parse(&[("PGPASSWORD", "pw"), ("PGPORT", bad)]).unwrap_err();
        assert_eq!(problems(err), [("PGPORT".to_owned(), Some(bad.to_owned()))]);
    }
    let config = parse(&[("PGPASSWORD", "pw"), ("PGPORT", "6543")]).unwrap();
    assert_eq!(config.port(), 6543);
    // Surrounding whitespace is ignored, as for every AppKit variable (appkit-env's rule).
    let config = parse(&[("PGPASSWORD", "pw"), ("PGPORT", " 6543 ")]).unwrap();
    assert_eq!(config.port(), 6543);
    assert_eq!(parse(&[("PGPASSWORD", "pw")]).unwrap().port(), 5432);
}

#[test]
fn sslmode_values_mean_what_libpq_says() {
    let table = [
        ("disable", PgSslMode::Disable),
        ("allow", PgSslMode::Allow),
        ("prefer", PgSslMode::Prefer),
        ("require", PgSslMode::Require),
        ("verify-ca", PgSslMode::VerifyCa),
        ("verify-full", PgSslMode::VerifyFull),
    ];
    for (raw, mode) in table {
        let config = parse(&[("PGPASSWORD", "pw"), ("PGSSLMODE", raw)]).unwrap();
        assert_eq!(
            format!("{:?}", config.ssl_mode()),
            format!("{mode:?}"),
            "{raw}"
        );
    }
    let default = parse(&[("PGPASSWORD", "pw")]).unwrap();
    assert!(
        matches!(default.ssl_mode(), PgSslMode::Prefer),
        "libpq's default"
    );
    // libpq compares sslmode case-sensitively.
    for bad in ["REQUIRE", "verify_full", "true", "on"] {
        let err = parse(&[("PGPASSWORD", "pw"), ("PGSSLMODE", bad)]).unwrap_err();
        assert_eq!(
            problems(err),
            [("PGSSLMODE".to_owned(), Some(bad.to_owned()))]
        );
    }
}

#[test]
fn defaults_match_the_design() {
    let config = parse(&[("PGPASSWORD", "pw")]).unwrap();
    assert_eq!(config.max_connections(), 10);
    assert_eq!(config.connect_timeout(), Duration::from_secs(10));
    assert_eq!(config.idle_timeout(), Duration::from_secs(30));
    assert_eq!(config.database(), None);
    assert_eq!(config.application_name(), None);
}

#[test]
fn pg_variables_are_read() {
    let config = parse(&[
        ("PGPASSWORD", "pw"),
        ("PGDATABASE", "main"),
        ("PGAPPNAME", "svc"),
        ("PGSSLMODE", "require"),
    ])
    .unwrap();
    assert_eq!(config.host(), "db.example.com");
    assert_eq!(config.user(), "app");
    assert_eq!(config.database(), Some("main"));
    assert_eq!(config.application_name(), Some("svc"));
}

#[test]
fn static_password_is_used_when_pgpassword_is_set() {
    let config = parse(&[
        ("PGPASSWORD", "pw"),
        ("DATABRICKS_CLIENT_ID", "sp"),
        ("DATABRICKS_CLIENT_SECRET", "secret"),
    ])
    .unwrap();
    assert_eq!(config.credentials().kind(), CredentialKind::Password);
}

#[test]
fn databricks_oauth_is_used_when_client_credentials_are_set() {
    let config = parse(&[
        ("DATABRICKS_HOST", "my-workspace.cloud.databricks.com/"),
        ("DATABRICKS_CLIENT_ID", "sp"),
        ("DATABRICKS_CLIENT_SECRET", "secret"),
        ("LAKEBASE_INSTANCE_NAME", "my-instance"),
    ])
    .unwrap();
    assert_eq!(config.credentials().kind(), CredentialKind::DatabricksOAuth);
    let oauth = config.credentials().databricks_oauth_config().unwrap();
    assert_eq!(
        oauth.workspace_host(),
        "https://my-workspace.cloud.databricks.com"
    );
    assert_eq!(oauth.client_id(), "sp");
    assert_eq!(oauth.instance_name(), "my-instance");
}

#[test]
fn no_credential_says_what_to_set() {
    let message = parse(&[]).unwrap_err().to_string();
    assert!(message.contains("PGPASSWORD is not set"), "{message}");
    for var in [
        "DATABRICKS_HOST",
        "DATABRICKS_CLIENT_ID",
        "DATABRICKS_CLIENT_SECRET",
        "LAKEBASE_INSTANCE_NAME",
    ] {
        assert!(message.contains(var), "{var} missing from {message}");
    }
    let err = parse(&[("PGPASSWORD", "")]).unwrap_err();
    assert_eq!(
        problems(err)[0].0,
        "PGPASSWORD",
        "an empty value counts as unset"
    );
}

#[test]
fn half_of_the_client_credentials_names_the_missing_half() {
    let err = parse(&[("DATABRICKS_CLIENT_SECRET", "secret")]).unwrap_err();
    assert_eq!(problems(err), [("DATABRICKS_CLIENT_ID".to_owned(), None)]);
    let err = parse(&[("DATABRICKS_CLIENT_ID", "sp")]).unwrap_err();
    assert_eq!(
        problems(err),
        [("DATABRICKS_CLIENT_SECRET".to_owned(), None)]
    );
}

#[test]
fn secrets_never_appear_in_errors_or_debug_output() {
    let secret = "do-not-show-me-1234";
    let bad_sets: [&[(&str, &str)]; 3] = [
        &[("PGPORT", "abc"), ("DATABRICKS_CLIENT_SECRET", secret)],
        &[
            ("DATABRICKS_CLIENT_ID", "sp"),
            ("DATABRICKS_CLIENT_SECRET", secret),
            ("DATABRICKS_HOST", "::"),
        ],
        &[("PGPASSWORD", secret), ("PGSSLMODE", "nope")],
    ];
    for vars in bad_sets {
        let err = parse(vars).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(secret), "{shown}");
    }
    let good = parse(&[
        ("DATABRICKS_HOST", "https://w"),
        ("DATABRICKS_CLIENT_ID", "sp"),
        ("DATABRICKS_CLIENT_SECRET", secret),
        ("LAKEBASE_INSTANCE_NAME", "i"),
    ])
    .unwrap();
    let shown = format!("{good:?}");
    assert!(
        !shown.contains(secret) && shown.contains("<redacted>"),
        "{shown}"
    );
    let good = parse(&[("PGPASSWORD", secret)]).unwrap();
    assert!(!format!("{good:?}").contains(secret));
    let url = LakebaseConfig::from_url(&format!("postgres://u:{secret}@h:abc/db")).unwrap_err();
    assert!(!format!("{url} {url:?}").contains(secret), "{url}");
}

/// Property tests: any value of any variable either parses to the documented value or
/// fails with problems that all name that variable; secrets never appear; never a panic.
mod generated {
    use appkit_env::testing;
    use appkit_lakebase::{CredentialKind, Error, LakebaseConfig};
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use proptest::prelude::*;
    use proptest::sample::select;

    const PASSWORD_BASE: [(&str, &str); 3] =
        [("PGHOST", "db"), ("PGUSER", "app"), ("PGPASSWORD", "pw")];
    const OAUTH_BASE: [(&str, &str); 6] = [
        ("PGHOST", "db"),
        ("PGUSER", "app"),
        ("DATABRICKS_HOST", "https://w.example.com"),
        ("DATABRICKS_CLIENT_ID", "sp"),
        ("DATABRICKS_CLIENT_SECRET", "s3cret"),
        ("LAKEBASE_INSTANCE_NAME", "inst"),
    ];
    const VARIABLES: [&str; 11] = appkit_lakebase::config::VARIABLES;
    const SECRETS: [&str; 2] = ["PGPASSWORD", "DATABRICKS_CLIENT_SECRET"];

    /// Any value, plus the pool's own shapes (TLS modes, URLs, host names).
    fn values() -> impl Strategy<Value = String> {
        prop_oneof![
            testing::values(),
            "(disable|allow|prefer|require|verify-ca|verify-full|REQUIRE|on)",
            "(https?|ftp)://[a-z:@%0-9]{0,12}(/[a-z]{0,4})?",
            "[a-z0-9.-]{1,12}",
        ]
    }

    fn read(
        base: &[(&'static str, &'static str)],
        var: &str,
        value: &str,
    ) -> Result<LakebaseConfig, Error> {
        let vars = base
            .iter()
            .filter(|(k, _)| *k != var)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([(var.to_owned(), value.to_owned())]);
        LakebaseConfig::from_vars(vars)
    }

    /// The documented whole-number rule, for a port from 1.
    fn whole(value: &str) -> Option<u16> {
        testing::whole_number(value)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn every_variable_parses_or_names_itself(
            var in select(VARIABLES.to_vec()),
            value in values(),
            oauth in any::<bool>(),
        ) {
            let base: &[(&str, &str)] = if oauth { &OAUTH_BASE } else { &PASSWORD_BASE };
            match read(base, var, &value) {
                Ok(config) => {
                    let v = value.trim();
                    match var {
                        "PGPORT" if !v.is_empty() => prop_assert_eq!(Some(config.port()), whole(&value)),
                        "PGPORT" => prop_assert_eq!(config.port(), 5432),
                        "PGHOST" => prop_assert_eq!(config.host(), v),
                        "PGUSER" => prop_assert_eq!(config.user(), v),
                        "PGDATABASE" => prop_assert_eq!(config.database(), Some(v).filter(|v| !v.is_empty())),
                        "PGAPPNAME" => prop_assert_eq!(config.application_name(), Some(v).filter(|v| !v.is_empty())),
                        "PGPASSWORD" if !v.is_empty() => prop_assert_eq!(config.credentials().kind(), CredentialKind::Password),
                        _ => {}
                    }
                }
                Err(err) => {
                    let Error::Config(problems) = &err else {
                        panic!("not a config error: {err:?}");
                    };
                    let text = err.to_string();
                    prop_assert!(text.contains(var), "{}", text);
                    for p in problems.problems() {
                        prop_assert_eq!(p.variable(), var, "{}", text);
                    }
                    if SECRETS.contains(&var) && value.len() >= 4 {
                        prop_assert!(!testing::shown(problems).contains(&value), "{}", text);
                    }
                    if var == "PGPORT" {
                        prop_assert_eq!(whole(&value), None, "{}", text);
                    }
                }
            }
        }

        /// Well-formed URLs with any user, password, host and database (percent-encoded)
        /// give back exactly those values.
        #[test]
        fn postgres_urls_round_trip(
            scheme in "(postgres|postgresql)",
            user in "\\PC{1,12}",
            password in proptest::option::of("\\PC{1,16}"),
            host in "[a-z][a-z0-9.-]{0,12}",
            port in proptest::option::of(1u16..),
            // `.` and `..` are path dot-segments to a URL parser: no database can be named so.
            database in proptest::option::of("\\PC{1,12}".prop_filter("dot segment", |d| d != "." && d != "..")),
        ) {
            let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
            let mut url = format!("{scheme}://{}", enc(&user));
            if let Some(pw) = &password {
                url += &format!(":{}", enc(pw));
            }
            url += &format!("@{host}");
            if let Some(port) = port {
                url += &format!(":{port}");
            }
            if let Some(db) = &database {
                url += &format!("/{}", enc(db));
            }
            let config = LakebaseConfig::from_url(&url).unwrap();
            prop_assert_eq!(config.user(), user.as_str());
            prop_assert_eq!(config.host(), host.as_str());
            prop_assert_eq!(config.port(), port.unwrap_or(5432));
            prop_assert_eq!(config.database(), database.as_deref());
            let kind = if password.is_some() { CredentialKind::Password } else { CredentialKind::None };
            prop_assert_eq!(config.credentials().kind(), kind);
            let debug = format!("{config:?}");
            if let Some(pw) = &password {
                prop_assert!(!debug.contains(&format!(":{}@", enc(pw))), "{}", debug);
            }
        }

        /// Malformed URLs never panic, and their password never appears, written plainly
        /// or percent-encoded.
        #[test]
        fn bad_postgres_urls_never_show_the_password(
            scheme in "(postgres|postgresql|mysql|http|)",
            // Not all digits: `scheme://u:1234` is a host and a port to any URL parser.
            password in "[A-Za-z][A-Za-z0-9]{3}\\PC{0,12}",
            encode in any::<bool>(),
            rest in "(@|@h:|@h:x|@h:0|@h:99999|@h/db\\?sslmode=x|@h/db\\?x=1|@/db|@h/%FF|@\\[::1|)",
        ) {
            let shown = if encode {
                utf8_percent_encode(&password, NON_ALPHANUMERIC).to_string()
            } else {
                password.clone()
            };
            let url = format!("{scheme}://u:{shown}{rest}");
            if let Err(err) = LakebaseConfig::from_url(&url) {
                let Error::Config(problems) = &err else {
                    panic!("not a config error: {err:?}");
                };
                let text = testing::shown(problems);
                prop_assert!(!text.contains(&password), "{}", text);
                prop_assert!(!text.contains(&shown), "{}", text);
            }
        }
    }
}
