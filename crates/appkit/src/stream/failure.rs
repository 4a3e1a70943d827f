//! What a browser is told about a task's failure.
//!
//! The engine's `failed` and `retrying` payloads carry `{"error": {"message", "kind"}}`,
//! the handler's own text. AppKit's client shows a top-level `message`, so the host adds
//! one; in production it is generic unless the handler marked its error public
//! ([`TaskError::public`](taskflow::TaskError::public)), and the raw text is taken out of
//! `error.message` too. The error's `kind` always stays.

use serde_json::Value;
use taskflow::EventKind;

/// What the user is shown for a failed task in production, unless the error is public.
pub const TASK_FAILED_MESSAGE: &str = "Task failed";

/// What the user is shown for a failed attempt (`retrying`) in production, unless the
/// error is public.
pub const ATTEMPT_FAILED_MESSAGE: &str = "Attempt failed; retrying";

/// The payload a browser gets for an event of `kind`: for `failed` and `retrying`, with a
/// top-level `message` (generic in production unless public) and, in production, the raw
/// text out of `error.message`; other events as they are.
pub(crate) fn client_payload(kind: EventKind, payload: &Value, redact: bool) -> Option<Value> {
    let generic = match kind {
        EventKind::Failed => TASK_FAILED_MESSAGE,
        EventKind::Retrying => ATTEMPT_FAILED_MESSAGE,
        _ => return None,
    };
    let mut payload = payload.clone();
    let message = match payload.get_mut("error") {
        Some(error) => shown(error, redact, generic),
        None => generic.to_owned(),
    };
    if let Some(object) = payload.as_object_mut() {
        object.insert("message".to_owned(), Value::String(message));
    }
    Some(payload)
}

/// A task's stored error as a browser may see it (the task status route): in production,
/// the raw text replaced by the generic one unless the error is public.
pub(crate) fn client_error(mut error: Value, redact: bool) -> Value {
    shown(&mut error, redact, TASK_FAILED_MESSAGE);
    error
}

/// The message to show for `error` (`{"message", "kind", "public"?}`), redacting its
/// `message` in place when it must not be shown.
fn shown(error: &mut Value, redact: bool, generic: &str) -> String {
    let public = error.get("public").and_then(Value::as_bool) == Some(true);
    let raw = error.get("message").and_then(Value::as_str);
    match raw {
        Some(raw) if public || !redact => raw.to_owned(),
        Some(_) => {
            error["message"] = Value::String(generic.to_owned());
            generic.to_owned()
        }
        None => generic.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn failed(error: Value) -> Value {
        json!({"error": error, "attempt": 3})
    }

    #[test]
    fn development_shows_the_handler_message_at_the_top() {
        let p = failed(json!({"message": "db password rejected", "kind": "retryable"}));
        let out = client_payload(EventKind::Failed, &p, false).unwrap();
        assert_eq!(out["message"], "db password rejected");
        assert_eq!(out["error"]["message"], "db password rejected");
        assert_eq!(out["attempt"], 3);
    }

    #[test]
    fn production_shows_a_generic_message_unless_the_error_is_public() {
        let p = failed(json!({"message": "db password rejected", "kind": "retryable"}));
        let out = client_payload(EventKind::Failed, &p, true).unwrap();
        assert_eq!(out["message"], TASK_FAILED_MESSAGE);
        assert_eq!(out["error"]["message"], TASK_FAILED_MESSAGE);
        assert_eq!(out["error"]["kind"], "retryable");
        assert!(!out.to_string().contains("password"));
        let p = failed(json!({"message": "no rows", "kind": "permanent", "public": true}));
        let out = client_payload(EventKind::Failed, &p, true).unwrap();
        assert_eq!(out["message"], "no rows");
        assert_eq!(out["error"]["message"], "no rows");
    }

    #[test]
    fn retrying_is_redacted_too_and_other_events_pass() {
        let p = json!({"attempt": 1, "error": {"message": "secret", "kind": "retryable"}, "retryInMs": 5});
        let out = client_payload(EventKind::Retrying, &p, true).unwrap();
        assert_eq!(out["message"], ATTEMPT_FAILED_MESSAGE);
        assert!(!out.to_string().contains("secret"));
        assert!(client_payload(EventKind::Completed, &json!({"result": 1}), true).is_none());
        let stored = client_error(json!({"message": "secret", "kind": "permanent"}), true);
        assert_eq!(stored["message"], TASK_FAILED_MESSAGE);
        let stored = client_error(json!({"message": "secret", "kind": "permanent"}), false);
        assert_eq!(stored["message"], "secret");
    }
}
