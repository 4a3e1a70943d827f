//! Property-test helpers for configurations read through [`Env`](crate::Env): the rules
//! written out independently of the parsers, and values that probe them. Enabled by the
//! `testing` feature (for dev-dependencies; not for production code).

use proptest::prelude::*;

use crate::Problems;

/// The documented whole-number rule, written without `str::parse`: surrounding
/// whitespace, then an optional `+` and decimal digits only; `None` for anything else or
/// beyond `u128`. Compare the result with the range the variable allows.
pub fn whole_number(value: &str) -> Option<u128> {
    let v = value.trim();
    let digits = v.strip_prefix('+').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.bytes().try_fold(0u128, |acc, b| {
        acc.checked_mul(10)?.checked_add(u128::from(b - b'0'))
    })
}

/// The documented boolean rule: `true`/`false` in any case, `1`/`0`; `None` otherwise.
pub fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Values that probe a variable's parser: any string, printable text, numbers with signs
/// and whitespace, huge and negative numbers, floats, boolean-like words, non-ASCII
/// digits, empty and whitespace-only.
pub fn values() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,16}",
        "[ \t]{0,2}[+-]?[0-9]{0,42}[ \t]{0,2}",
        any::<u128>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "(?i)(true|false|yes|no|on|off|1|0|tru|t|f)",
        Just(String::new()),
        Just(" \t ".to_owned()),
        Just("١٢٣".to_owned()),
        Just("１２".to_owned()),
    ]
}

/// Everything `problems` shows but the variables' names (their values and expected
/// forms), to check that a secret is not among it: a secret may share letters with a name.
pub fn shown(problems: &Problems) -> String {
    problems
        .problems()
        .iter()
        .map(|p| format!("{} {}", p.value().unwrap_or_default(), p.expected()))
        .collect::<Vec<_>>()
        .join("\n")
}
