//! Validation of names, keys and payload sizes.

use crate::error::{Error, Result};
use crate::event::RESERVED_EVENT_NAMES;

/// Largest accepted input or event payload, as serialized JSON.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Longest accepted caller-supplied idempotency key.
pub const MAX_KEY_LEN: usize = 256;
const MAX_NAME_LEN: usize = 128;

/// Task names: `[A-Za-z0-9._:-]{1,128}`.
pub(crate) fn check_task_name(name: &str) -> Result<()> {
    if valid_task_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(
            "task name",
            format!("`{}` must match [A-Za-z0-9._:-]{{1,128}}", truncate(name)),
        ))
    }
}

/// Whether `name` matches `[A-Za-z0-9._:-]{1,128}`; `const` so a
/// [`TaskDef`](crate::TaskDef) with a bad name fails to compile.
pub(crate) const fn valid_task_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
            return false;
        }
        i += 1;
    }
    true
}

/// Caller-supplied keys: 1–256 visible ASCII characters (they travel in HTTP headers).
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            "idempotency key",
            format!("length must be 1..={MAX_KEY_LEN}, got {}", key.len()),
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "idempotency key",
            "only visible ASCII characters are allowed",
        ));
    }
    Ok(())
}

/// User ids: non-empty, ≤ 256 bytes, no control characters.
pub(crate) fn check_user(user: &str) -> Result<()> {
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return Err(Error::invalid(
            "user id",
            "must be 1..=256 bytes without control characters",
        ));
    }
    Ok(())
}

/// Event names from handlers: not reserved, no CR or LF, 1–128 bytes.
pub(crate) fn check_event_name(name: &str) -> Result<()> {
    if RESERVED_EVENT_NAMES.contains(&name) {
        return Err(Error::invalid(
            "event name",
            format!("`{name}` is reserved for the engine"),
        ));
    }
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['\r', '\n']) {
        return Err(Error::invalid(
            "event name",
            "must be 1..=128 bytes without CR or LF",
        ));
    }
    Ok(())
}

/// Serializes `value` and refuses it when larger than [`MAX_PAYLOAD_BYTES`].
pub(crate) fn check_payload(field: &'static str, value: &serde_json::Value) -> Result<()> {
    let len = serde_json::to_vec(value)?.len();
    if len > MAX_PAYLOAD_BYTES {
        return Err(Error::invalid(
            field,
            format!("{len} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}"),
        ));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_follow_the_documented_pattern() {
        for ok in ["a", "count", "a.b_c:d-e", &"x".repeat(128)] {
            assert!(check_task_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "ä", "a/b", &"x".repeat(129), "a\n"] {
            assert!(
                matches!(
                    check_task_name(bad),
                    Err(Error::Invalid {
                        field: "task name",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_must_be_short_visible_ascii() {
        assert!(check_key("abc-123_X").is_ok());
        assert!(check_key(&"k".repeat(256)).is_ok());
        assert!(check_key(&"k".repeat(257)).is_err());
        assert!(check_key("").is_err());
        assert!(check_key("a b").is_err());
        assert!(check_key("a\r\nb").is_err());
    }

    #[test]
    fn reserved_and_multiline_event_names_are_refused() {
        for name in RESERVED_EVENT_NAMES {
            assert!(check_event_name(name).is_err(), "{name}");
        }
        assert!(check_event_name("tick").is_ok());
        assert!(check_event_name("a\nb").is_err());
        assert!(check_event_name("a\rb").is_err());
        assert!(check_event_name("").is_err());
    }

    #[test]
    fn payloads_over_one_mib_are_refused() {
        let ok = serde_json::Value::String("x".repeat(MAX_PAYLOAD_BYTES - 2));
        assert!(check_payload("input", &ok).is_ok());
        let big = serde_json::Value::String("x".repeat(MAX_PAYLOAD_BYTES - 1));
        assert!(check_payload("input", &big).is_err());
    }
}
