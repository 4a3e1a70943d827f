//! Unit and property tests of the getters: arbitrary values either parse to the documented
//! value or give a problem that names the variable; never a panic, never a silent default.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Debug;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const VAR: &str = "SOME_VAR";

fn env_with(value: &str) -> Env<'static> {
    let value = value.to_owned();
    Env::new(move |name| (name == VAR).then(|| value.clone()))
}

/// What every getter promises for `value`: blank is unset (no problem); otherwise either
/// the `documented` value and no problem, or `None` and one problem naming the variable.
fn check<T: PartialEq + Debug>(value: &str, got: Option<T>, env: &Env<'_>, documented: Option<T>) {
    let problems = env.problems();
    if value.trim().is_empty() {
        assert_eq!(got, None, "blank {value:?} is unset");
        assert!(problems.is_empty(), "blank {value:?}: {problems}");
        return;
    }
    match documented {
        Some(want) => {
            assert_eq!(got, Some(want), "{value:?}");
            assert!(problems.is_empty(), "{value:?}: {problems}");
        }
        None => {
            assert_eq!(got, None, "{value:?} must not default silently");
            assert_eq!(problems.len(), 1, "{value:?}: {problems}");
            assert_eq!(problems.problems()[0].variable(), VAR);
            assert_eq!(problems.problems()[0].value(), Some(value));
            assert!(problems.to_string().contains(VAR), "{problems}");
        }
    }
}

use crate::testing::{boolean, values, whole_number};

/// The whole-number rule within `min..=max`.
fn whole(value: &str, min: u128, max: u128) -> Option<u128> {
    whole_number(value).filter(|n| (min..=max).contains(n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn booleans_parse_or_name_the_variable(value in values()) {
        let mut env = env_with(&value);
        let got = env.bool(VAR);
        let documented = boolean(&value);
        check(&value, got, &env, documented);
    }

    #[test]
    fn whole_numbers_parse_or_name_the_variable(value in values(), min in 0u16..3) {
        let mut env = env_with(&value);
        let got = env.number::<u16>(VAR, min);
        let want = whole(&value, min.into(), u16::MAX.into()).and_then(|n| u16::try_from(n).ok());
        check(&value, got, &env, want);

        let mut env = env_with(&value);
        let got = env.number::<u32>(VAR, 0);
        let want = whole(&value, 0, u32::MAX.into()).and_then(|n| u32::try_from(n).ok());
        check(&value, got, &env, want);

        let mut env = env_with(&value);
        let got = env.port(VAR, 1);
        let want = whole(&value, 1, 65535).and_then(|n| u16::try_from(n).ok());
        check(&value, got, &env, want);
    }

    #[test]
    fn durations_and_sizes_parse_or_name_the_variable(value in values(), min in 0u64..2) {
        let mut env = env_with(&value);
        let got = env.millis(VAR, min);
        let want = whole(&value, min.into(), MAX_MILLIS.into())
            .and_then(|n| u64::try_from(n).ok())
            .map(Duration::from_millis);
        check(&value, got, &env, want);

        let mut env = env_with(&value);
        let got = env.bytes(VAR);
        let want = whole(&value, 1, usize::MAX as u128).and_then(|n| usize::try_from(n).ok());
        check(&value, got, &env, want);
    }

    #[test]
    fn choices_match_exactly_or_name_the_variable(value in prop_oneof![values(), "(?i)(grpc|http/protobuf)"]) {
        let mut env = env_with(&value);
        let got = env.one_of(VAR, &[("http/protobuf", 1), ("grpc", 2)]);
        let want = match value.trim() {
            "http/protobuf" => Some(1),
            "grpc" => Some(2),
            _ => None,
        };
        check(&value, got, &env, want);
    }

    /// A secret's value never appears in a problem, whatever it is.
    #[test]
    fn secrets_are_never_shown(secret in "[^ \t\r\n]\\PC{6,30}") {
        let mut env = env_with(&secret);
        let got: Option<()> = env.parse_shown(VAR, Shown::Secret, |_| Err("never".to_owned()));
        prop_assert_eq!(got, None);
        let text = crate::testing::shown(env.problems());
        prop_assert!(env.problems().names(VAR) && text.contains(REDACTED), "{}", text);
        prop_assert!(!text.contains(&secret), "{}", text);
    }

    /// A URL's password never appears in a problem, however the URL is malformed.
    #[test]
    fn url_passwords_are_never_shown(
        scheme in "(postgres|postgresql|http|ftp|sqlite)",
        user in "[a-z]{0,6}",
        // Not all digits: `scheme://u:1234` is a host and a port to any URL parser.
        password in "[A-Za-z][A-Za-z0-9]{2}\\PC{3,20}",
        encode in any::<bool>(),
        rest in "(@db|@db:5432|@db:x|@db:99999|@|@/x|@db/main\\?sslmode=x|@:1|/db|)",
    ) {
        let shown_password = if encode {
            percent_encoding::utf8_percent_encode(&password, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        } else {
            password.clone()
        };
        let value = format!("{scheme}://{user}:{shown_password}{rest}");
        let mut env = env_with(&value);
        let _ = env.url(VAR, &["https"]);
        let text = crate::testing::shown(env.problems());
        prop_assert!(env.problems().names(VAR), "{}", text);
        prop_assert!(!text.contains(&password), "{}", text);
        prop_assert!(!text.contains(&shown_password), "{}", text);
    }

    /// `key=value` lists round-trip through percent-encoding.
    #[test]
    fn key_values_round_trip(pairs in prop::collection::vec(("[a-z][a-z.]{0,8}", any::<String>()), 0..5)) {
        let value: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                let v = percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC);
                format!("{k}={v}")
            })
            .collect();
        let mut env = env_with(&value.join(","));
        let got = env.key_values(VAR, Shown::Secret);
        if pairs.is_empty() {
            prop_assert_eq!(got, None);
        } else {
            prop_assert_eq!(got, Some(pairs));
        }
        prop_assert!(env.problems().is_empty());
    }

    #[test]
    fn key_values_never_panic_and_secrets_stay_hidden(value in values()) {
        let mut env = env_with(&value);
        if env.key_values(VAR, Shown::Secret).is_none() && !value.trim().is_empty() {
            let text = env.problems().to_string();
            prop_assert!(text.contains(VAR), "{}", text);
            prop_assert!(value.trim().len() < 3 || !text.contains(value.trim()), "{}", text);
        }
    }
}

#[test]
fn every_bad_variable_is_reported_at_once() {
    let vars = HashMap::from([
        ("A_BOOL", "yes"),
        ("A_PORT", "99999"),
        ("A_MS", "-5"),
        ("A_BYTES", "0"),
        ("A_CHOICE", "maybe"),
        ("A_URL", "ftp://u:hunter2@h"),
        ("A_SECRET", "hunter3"),
        ("A_GOOD", "true"),
    ]);
    let mut env = Env::new(|name| vars.get(name).map(|v| (*v).to_owned()));
    assert_eq!(env.bool("A_BOOL"), None);
    assert_eq!(env.port("A_PORT", 0), None);
    assert_eq!(env.millis("A_MS", 0), None);
    assert_eq!(env.bytes("A_BYTES"), None);
    assert_eq!(env.one_of("A_CHOICE", &[("yes", ()), ("no", ())]), None);
    assert_eq!(env.url("A_URL", &["https"]), None);
    let secret: Option<()> = env.parse_shown("A_SECRET", Shown::Secret, |_| Err("x".into()));
    assert_eq!(secret, None);
    assert_eq!(env.bool("A_GOOD"), Some(true));
    env.require("A_MISSING", "something");
    let err = env.finish(()).unwrap_err();
    let names: Vec<&str> = err.problems().iter().map(Problem::variable).collect();
    assert_eq!(
        names,
        [
            "A_BOOL",
            "A_PORT",
            "A_MS",
            "A_BYTES",
            "A_CHOICE",
            "A_URL",
            "A_SECRET",
            "A_MISSING"
        ]
    );
    let text = err.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("hunter3"),
        "{text}"
    );
    assert!(text.contains("A_URL=\"ftp://u:***@h/\""), "{text}");
    assert!(
        text.contains("A_MISSING is not set: expected something"),
        "{text}"
    );
    assert!(text.contains("`yes` or `no`"), "{text}");
}

#[test]
fn values_that_are_not_utf8_are_problems_and_secrets_stay_hidden() {
    use std::os::unix::ffi::OsStringExt;
    let bad = OsString::from_vec(vec![b'h', 0xff, b'i']);
    let mut env = Env::from_os(move |_| Some(bad.clone()));
    assert_eq!(env.string("HOST"), None);
    assert_eq!(env.secret("PASSWORD"), None);
    let text = env.finish(()).unwrap_err().to_string();
    assert!(
        text.contains("HOST=\"<not valid UTF-8>\": expected valid UTF-8"),
        "{text}"
    );
    assert!(text.contains("PASSWORD=\"<redacted>\""), "{text}");
}

#[test]
fn secrets_keep_their_whitespace_and_other_values_lose_it() {
    let mut env = env_with("  pw  ");
    assert_eq!(env.secret(VAR).as_deref(), Some("  pw  "));
    assert_eq!(env.string(VAR).as_deref(), Some("pw"));
}

#[test]
fn the_same_problem_from_two_readers_is_listed_once() {
    let mut a = Problems::new();
    a.push(Problem::invalid("APPKIT_ENV", "prod", Shown::Plain, "x"));
    let mut b = Problems::new();
    b.push(Problem::invalid("APPKIT_ENV", "prod", Shown::Plain, "y"));
    b.push(Problem::invalid("PORT", "x", Shown::Plain, "y"));
    a.append(b);
    assert_eq!(a.len(), 2, "{a}");
}

#[test]
fn url_redaction_covers_query_passwords_and_urls_without_authority() {
    assert_eq!(
        redact_url("postgres://u@h/db?password=hunter2&sslmode=require"),
        "postgres://u@h/db?password=***&sslmode=require"
    );
    assert_eq!(redact_url("postgres:u:hunter2@h"), REDACTED);
    assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
}
