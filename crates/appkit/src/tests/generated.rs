//! Bad input, generated: request bodies against a typed task route, and event names and
//! payloads through the engine and the SSE wire. Each case answers a clear 4xx (bodies)
//! or is refused at `emit` (events), and nothing half-written is left behind.

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use super::*;

/// Counts the task rows in the host's SQLite store.
async fn task_rows(host: &Host) -> i64 {
    let url = format!(
        "sqlite://{}?mode=ro",
        host._dir.path().join("tasks.db").display()
    );
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Bodies: arbitrary bytes (most not UTF-8), arbitrary JSON, JSON of the wrong shape
/// (objects with unknown keys, negative and huge numbers, strings with CR/LF), deep
/// nesting past the decoder's recursion limit, and bodies over the configured limit.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let json_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[^\"]{0,20}".prop_map(Value::from),
        Just(json!("line\r\nbreak\u{2028}")),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
    ];
    let json = json_leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json.prop_map(|v| v.to_string().into_bytes()),
        (1usize..400).prop_map(|depth| {
            let mut s = "[".repeat(depth);
            s.push_str(&"]".repeat(depth));
            s.into_bytes()
        }),
        (1025usize..4096).prop_map(|n| vec![b' '; n]),
        Just(b"[1, 2, 3]".to_vec()),
        Just(b"{\"0\": 1, \"1\": 2}".to_vec()),
        Just(b"[4294967296, 1]".to_vec()),
        Just(b"[1, -1]".to_vec()),
    ]
}

/// A runtime for tests that run proptest's (synchronous) runner around async calls.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn generated_bodies_answer_4xx_in_the_error_shape_and_create_no_task() {
    let rt = runtime();
    let host = rt.block_on(host(|c| c.max_body_bytes = 1024));
    let content_types = [Some("application/json"), Some("text/plain"), None];
    let statuses = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut runner = TestRunner::new(ProptestConfig::with_cases(300));
    let result = runner.run(&(bodies(), 0..content_types.len()), |(body, ct)| {
        // A body that happens to be a valid `(u32, u64)` input is not bad input.
        if content_types[ct] == Some("application/json")
            && body.len() <= 1024
            && serde_json::from_slice::<(u32, u64)>(&body).is_ok()
        {
            return Ok(());
        }
        let mut req = Request::post("/api/probe/ticks");
        if let Some(ct) = content_types[ct] {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(Body::from(body.clone())).unwrap();
        let (status, _, answer) = rt.block_on(host.call(req));
        prop_assert!(status.is_client_error(), "{status}: {answer}");
        let v: Value = serde_json::from_str(&answer)
            .map_err(|e| TestCaseError::fail(format!("{e}: {answer}")))?;
        prop_assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
        prop_assert!(
            v["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{answer}"
        );
        statuses.lock().unwrap().insert(status.as_u16());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Each class was reached: malformed (400), over the limit (413), not JSON (415).
    let statuses = statuses.into_inner().unwrap();
    for status in [400, 413, 415] {
        assert!(statuses.contains(&status), "{statuses:?}");
    }
    assert_eq!(
        rt.block_on(task_rows(&host)),
        0,
        "a refused body left a task"
    );
    rt.block_on(host.stop());
}

/// An event's payload as the test describes it: JSON, or a string of `n` bytes built by
/// the handler (a task's input is itself limited to 1 MiB, so an oversized payload cannot
/// travel in it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) enum Payload {
    Json(Value),
    Huge(usize),
}

impl Payload {
    fn value(&self) -> Value {
        match self {
            Self::Json(v) => v.clone(),
            Self::Huge(n) => Value::from("x".repeat(*n)),
        }
    }
}

/// `[(name, payload)]`: the events the `emit-all` task emits, in order.
pub(super) const EMIT_ALL: taskflow::TaskDef<Vec<(String, Payload)>, Vec<bool>> =
    taskflow::TaskDef::new("emit-all");

/// Emits each event; returns which `emit` accepted. A refused one changes nothing.
pub(super) async fn emit_all(
    ctx: TaskContext,
    events: Vec<(String, Payload)>,
) -> Result<Vec<bool>, TaskError> {
    let mut accepted = Vec::with_capacity(events.len());
    for (name, payload) in events {
        match ctx.emit(&name, payload.value()).await {
            Ok(()) => accepted.push(true),
            Err(taskflow::Error::Invalid { .. }) => accepted.push(false),
            Err(e) => return Err(TaskError::permanent(e.to_string())),
        }
    }
    Ok(accepted)
}

/// What the engine documents as a valid event name.
fn valid_event_name(name: &str) -> bool {
    !taskflow::RESERVED_EVENT_NAMES.contains(&name)
        && (1..=128).contains(&name.len())
        && !name.contains(['\r', '\n'])
}

/// One SSE frame as a browser's parser reads it.
#[derive(Debug, Default)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

/// Parses an SSE body the way the HTML standard's event-stream parser does (fields split
/// at the first `:`, one leading space dropped, lines ended by CR, LF or CRLF).
fn parse_sse(body: &str) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut frame = Frame::default();
    for line in body.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        if line.is_empty() {
            if frame.event.is_some() || !frame.data.is_empty() {
                frames.push(std::mem::take(&mut frame));
            }
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "id" => frame.id = Some(value),
            "event" => frame.event = Some(value),
            "data" => frame.data.push(value),
            _ => {}
        }
    }
    frames
}

fn event_names() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9._-]{0,20}",
        "\\PC{1,40}",
        ".{0,3}[\r\n].{0,3}",
        Just(String::new()),
        Just("x".repeat(129)),
        Just(" leading space".to_owned()),
        Just("with: colon".to_owned()),
        prop::sample::select(taskflow::RESERVED_EVENT_NAMES).prop_map(str::to_owned),
    ]
}

fn payloads() -> impl Strategy<Value = Payload> {
    prop_oneof![
        "\\PC{0,60}".prop_map(|s| Payload::Json(Value::from(s))),
        ".{0,10}[\r\n\u{2028}\u{0}].{0,10}".prop_map(|s| Payload::Json(Value::from(s))),
        any::<i64>().prop_map(|n| Payload::Json(Value::from(n))),
        prop::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..4)
            .prop_map(|m| Payload::Json(json!(m))),
        // Around the 1 MiB limit of the serialized payload (2 bytes of quotes).
        prop::sample::select(vec![
            taskflow::MAX_PAYLOAD_BYTES - 2,
            taskflow::MAX_PAYLOAD_BYTES - 1,
            taskflow::MAX_PAYLOAD_BYTES + 1,
        ])
        .prop_map(Payload::Huge),
    ]
}

/// Whether the engine documents `(name, payload)` as an event it accepts.
fn acceptable(name: &str, payload: &Payload) -> bool {
    valid_event_name(name) && payload.value().to_string().len() <= taskflow::MAX_PAYLOAD_BYTES
}

#[test]
fn generated_event_names_and_payloads_reach_the_wire_intact_or_not_at_all() {
    let rt = runtime();
    let host = rt.block_on(host(|_| {}));
    let mut runner = TestRunner::new(ProptestConfig::with_cases(40));
    let events = prop::collection::vec((event_names(), payloads()), 1..6);
    let result = runner.run(&events, |events| {
        let input = serde_json::to_string(&events).unwrap();
        let (status, _, body) = rt.block_on(host.call(json_post("/api/probe/emit-all", &input)));
        prop_assert_eq!(status, StatusCode::OK, "{}", body);
        let frames = parse_sse(&body);
        let user: Vec<&Frame> = frames
            .iter()
            .filter(|f| {
                let name = f.event.as_deref().unwrap_or("message");
                !taskflow::RESERVED_EVENT_NAMES.contains(&name)
            })
            .collect();
        let expected: Vec<&(String, Payload)> = events
            .iter()
            .filter(|(name, payload)| acceptable(name, payload))
            .collect();
        prop_assert_eq!(user.len(), expected.len());
        for (frame, (name, payload)) in user.iter().zip(expected) {
            prop_assert_eq!(frame.event.as_deref(), Some(name.as_str()));
            let data: Value = serde_json::from_str(&frame.data.join("\n")).unwrap();
            prop_assert!(
                data == payload.value(),
                "payload of `{}` changed on the wire",
                name
            );
        }
        let last = frames.last().expect("frames");
        prop_assert_eq!(last.event.as_deref(), Some("completed"));
        let result: Value = serde_json::from_str(&last.data.join("\n")).unwrap();
        let oracle: Vec<bool> = events.iter().map(|(n, p)| acceptable(n, p)).collect();
        prop_assert_eq!(&result["result"], &json!(oracle));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(host.stop());
}

pub(super) async fn start_emit_all(
    State(cx): State<PluginContext>,
    req: TaskRequest,
    Json(events): Json<Vec<(String, Payload)>>,
) -> crate::Result<Response> {
    cx.execute(&req, EMIT_ALL, events).await
}
