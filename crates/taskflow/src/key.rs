//! Idempotency keys: SHA-256 over the RFC 8785 (JCS) canonical form of the submission.

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Derives the idempotency key of a submission: lowercase hex SHA-256 of the JCS
/// canonical JSON of `{"name": name, "input": input, "userId": user}`.
///
/// Two submissions with the same name, the same input (whatever its key order or number
/// spelling) and the same user get the same key.
///
/// Numbers are compared as JCS compares them, as IEEE 754 doubles: integers beyond 2^53
/// that round to the same double (9007199254740993 and 9007199254740992, say) give the
/// same key. Pass such values as strings when they must stay distinct, or supply a key.
///
/// # Examples
///
/// ```
/// let a = taskflow::idempotency_key("count", &serde_json::json!({"to": 3, "delay_ms": 1}), Some("u1"));
/// let b = taskflow::idempotency_key("count", &serde_json::json!({"delay_ms": 1.0, "to": 3}), Some("u1"));
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 64);
/// ```
pub fn idempotency_key(name: &str, input: &Value, user: Option<&str>) -> String {
    let mut canonical = String::with_capacity(64);
    canonical.push_str("{\"input\":");
    write_canonical(&mut canonical, input);
    canonical.push_str(",\"name\":");
    write_string(&mut canonical, name);
    canonical.push_str(",\"userId\":");
    match user {
        Some(u) => write_string(&mut canonical, u),
        None => canonical.push_str("null"),
    }
    canonical.push('}');
    let digest = Sha256::digest(canonical.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Where the SQLite store files a task by its key: the first 8 bytes of SHA-256 over
/// `key`, a NUL byte and `user` (`""` for no owner), as a big-endian `i64`.
///
/// Keys are random (derived keys are digests) or arbitrary strings, so an index on them
/// puts every new task on a random leaf page. On this 8-byte value the index is a fifth
/// of the size of one on the key and its owner, and stays in the page cache far longer as
/// the store grows. Lookups compare the key and owner as well, so a collision costs a
/// row read, never a wrong answer. The value is stored: it must not change.
pub(crate) fn key_hash(key: &str, user: &str) -> i64 {
    let mut hasher = Sha256::new();
    hasher.update(key.as_bytes());
    hasher.update([0]);
    hasher.update(user.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Writes `value` in RFC 8785 canonical form.
pub(crate) fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            // JCS orders keys by their UTF-16 code units.
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_canonical(out, v);
            }
            out.push('}');
        }
    }
}

/// JCS numbers are IEEE 754 doubles printed the way ECMAScript's `Number.toString` does.
fn write_number(out: &mut String, n: &serde_json::Number) {
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.is_finite() {
        let mut buf = ryu_js::Buffer::new();
        out.push_str(buf.format_finite(f));
    } else {
        // Not representable in JSON; serde_json never produces it from parsed input.
        out.push_str("null");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: &Value) -> String {
        let mut s = String::new();
        write_canonical(&mut s, v);
        s
    }

    #[test]
    fn canonical_form_matches_rfc8785_examples() {
        // RFC 8785 §3.2.2 number examples.
        let v: Value = serde_json::from_str("[1E30, 4.50, 0.002, 1e-27, -0, 100, 1e21]").unwrap();
        assert_eq!(canon(&v), "[1e+30,4.5,0.002,1e-27,0,100,1e+21]");
        let v = json!({"b": 1, "a": "x\u{1}\n\"", "€": true, "\u{10000}": null, "\u{fb33}": 0});
        // UTF-16 order puts U+10000 (0xD800 0xDC00) before U+FB33, unlike code-point order.
        assert_eq!(
            canon(&v),
            "{\"a\":\"x\\u0001\\n\\\"\",\"b\":1,\"€\":true,\"\u{10000}\":null,\"\u{fb33}\":0}"
        );
    }

    #[test]
    fn key_ignores_key_order_and_number_spelling_but_not_user() {
        let a = idempotency_key("t", &json!({"x": [1, 2.0], "y": "z"}), None);
        let b = idempotency_key("t", &json!({"y": "z", "x": [1.0, 2]}), None);
        assert_eq!(a, b);
        assert_ne!(
            a,
            idempotency_key("t", &json!({"x": [1, 2], "y": "z"}), Some("u"))
        );
        assert_ne!(
            a,
            idempotency_key("t2", &json!({"x": [1, 2], "y": "z"}), None)
        );
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn key_hash_is_the_first_8_bytes_of_sha256_of_key_nul_user() {
        // Pinned: the value is stored, so it must never change. sha256("k\0u") begins
        // 67ab7dceaf29a3f7, sha256("abc\0") dc1114cd074914bd (a negative i64).
        assert_eq!(key_hash("k", "u"), 0x67ab_7dce_af29_a3f7);
        assert_eq!(key_hash("abc", ""), -2_589_265_439_938_243_395);
        let d = Sha256::digest(b"k\0u");
        assert_eq!(
            key_hash("k", "u"),
            i64::from_be_bytes(d[..8].try_into().unwrap())
        );
        assert_ne!(key_hash("ku", ""), key_hash("k", "u"));
    }

    #[test]
    fn key_is_sha256_of_canonical_submission() {
        // sha256('{"input":null,"name":"a","userId":null}')
        let expected = {
            let d = Sha256::digest(br#"{"input":null,"name":"a","userId":null}"#);
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        assert_eq!(idempotency_key("a", &Value::Null, None), expected);
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        /// Arbitrary JSON up to a few levels deep, with object keys from a small alphabet
        /// (so maps overlap and reorder) and numbers both integral and fractional.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                (-1e12f64..1e12).prop_map(|f| json!(f)),
                "[a-zé\\\"\n\u{1}-\u{7f}]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map("[a-d]{1,2}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// The same value written with its object members in reverse order.
        fn reversed_text(v: &Value) -> String {
            match v {
                Value::Object(map) => {
                    let members: Vec<String> = map
                        .iter()
                        .rev()
                        .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), reversed_text(v)))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }
                Value::Array(items) => {
                    let items: Vec<String> = items.iter().map(reversed_text).collect();
                    format!("[{}]", items.join(","))
                }
                other => other.to_string(),
            }
        }

        proptest! {
            #[test]
            fn member_order_never_changes_the_key(v in json(), user in proptest::option::of("[a-z]{1,6}")) {
                let reordered: Value = serde_json::from_str(&reversed_text(&v)).unwrap();
                prop_assert_eq!(
                    idempotency_key("t", &v, user.as_deref()),
                    idempotency_key("t", &reordered, user.as_deref())
                );
            }

            #[test]
            fn canonical_form_is_json_that_means_the_same(v in json()) {
                let text = canon(&v);
                let back: Value = serde_json::from_str(&text).unwrap();
                // Canonical again is a fixed point, and numbers keep their double value.
                prop_assert_eq!(canon(&back), text);
            }

            #[test]
            fn name_input_and_user_each_change_the_key(v in json(), name in "[a-z]{1,8}") {
                let k = idempotency_key(&name, &v, Some("u"));
                prop_assert_ne!(&k, &idempotency_key(&format!("{name}x"), &v, Some("u")));
                prop_assert_ne!(&k, &idempotency_key(&name, &v, Some("v")));
                prop_assert_ne!(&k, &idempotency_key(&name, &v, None));
                prop_assert_ne!(&k, &idempotency_key(&name, &json!([v.clone()]), Some("u")));
            }
        }

        #[test]
        fn integers_beyond_2_pow_53_compare_as_doubles() {
            let big: Value = serde_json::from_str("9007199254740993").unwrap();
            let rounded: Value = serde_json::from_str("9007199254740992").unwrap();
            assert_eq!(
                idempotency_key("t", &big, None),
                idempotency_key("t", &rounded, None),
                "documented: JCS numbers are doubles"
            );
            let as_text = json!("9007199254740993");
            assert_ne!(
                idempotency_key("t", &as_text, None),
                idempotency_key("t", &big, None)
            );
        }
    }
}
