//! Unit tests for parsing the telemetry configuration.

use super::*;
use std::collections::HashMap;

fn parse(vars: &[(&str, &str)]) -> Result<TelemetryConfig, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    TelemetryConfig::from_lookup(|name| map.get(name).cloned())
}

#[test]
fn no_endpoint_means_no_export() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.otlp, None);
    assert_eq!(config.sampler, Sampler::ParentBasedAlwaysOn);
    assert_eq!(config.log_format, LogFormat::Pretty);
    assert_eq!(config.log_filter, DEFAULT_LOG_FILTER);
    assert!(!config.service_name.is_empty());
}

#[test]
fn bad_protocol_names_the_variable_value_and_expected_form() {
    let err = parse(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/xml"),
    ])
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{text}");
    assert!(text.contains("http/xml"), "{text}");
    assert!(text.contains("`http/protobuf` or `grpc`"), "{text}");
    assert_eq!(err.problems().len(), 1);
}

#[test]
fn every_problem_is_collected() {
    let err = parse(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "10s"),
        ("APPKIT_ENV", "staging"),
        ("RUST_LOG", "info,foo=notalevel"),
    ])
    .unwrap_err();
    let vars: Vec<&str> = err.problems().iter().map(|p| p.variable()).collect();
    for expected in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "APPKIT_ENV",
        "RUST_LOG",
    ] {
        assert!(vars.contains(&expected), "{expected} missing from {vars:?}");
    }
}

#[test]
fn headers_are_redacted_in_errors() {
    let err = parse(&[("OTEL_EXPORTER_OTLP_HEADERS", "Authorization Bearer s3cret")]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn sampler_names_and_ratio_parse() {
    let cases = [
        ("always_on", None, Sampler::AlwaysOn),
        ("always_off", None, Sampler::AlwaysOff),
        ("traceidratio", Some("0.25"), Sampler::TraceIdRatio(0.25)),
        ("traceidratio", None, Sampler::TraceIdRatio(1.0)),
        ("parentbased_always_on", None, Sampler::ParentBasedAlwaysOn),
        (
            "parentbased_always_off",
            None,
            Sampler::ParentBasedAlwaysOff,
        ),
        (
            "parentbased_traceidratio",
            Some("0"),
            Sampler::ParentBasedTraceIdRatio(0.0),
        ),
        // The argument is ignored by samplers that take none.
        ("always_on", Some("oops"), Sampler::AlwaysOn),
    ];
    for (name, arg, expected) in cases {
        let mut vars = vec![("OTEL_TRACES_SAMPLER", name)];
        if let Some(arg) = arg {
            vars.push(("OTEL_TRACES_SAMPLER_ARG", arg));
        }
        assert_eq!(parse(&vars).unwrap().sampler, expected, "{name} {arg:?}");
    }
}

#[test]
fn unknown_sampler_and_bad_ratio_are_errors() {
    let err = parse(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).unwrap_err();
    assert_eq!(err.problems()[0].variable(), "OTEL_TRACES_SAMPLER");
    assert!(
        err.problems()[0]
            .expected()
            .contains("parentbased_always_on")
    );

    let err = parse(&[
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "half"),
    ])
    .unwrap_err();
    assert_eq!(err.problems()[0].variable(), "OTEL_TRACES_SAMPLER_ARG");
    assert_eq!(err.problems()[0].value(), Some("half"));
}

#[test]
fn http_base_endpoint_gets_signal_paths_and_signal_endpoints_are_used_as_is() {
    let config = parse(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        (
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "https://logs.example/ingest",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key=abc%20def,x-other=1",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
    ])
    .unwrap();
    let otlp = config.otlp.unwrap();
    let traces = otlp.traces.unwrap();
    assert_eq!(traces.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(traces.protocol, Protocol::HttpProtobuf);
    assert_eq!(
        traces.headers,
        vec![
            ("x-api-key".to_owned(), "abc def".to_owned()),
            ("x-other".to_owned(), "1".to_owned())
        ]
    );
    assert_eq!(
        otlp.metrics.unwrap().endpoint,
        "http://collector:4318/v1/metrics"
    );
    assert_eq!(otlp.logs.unwrap().endpoint, "https://logs.example/ingest");
    assert_eq!(otlp.timeout, Duration::from_millis(2000));
}

#[test]
fn grpc_uses_the_base_endpoint_as_is() {
    let config = parse(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ])
    .unwrap();
    let traces = config.otlp.unwrap().traces.unwrap();
    assert_eq!(traces.endpoint, "http://collector:4317");
    assert_eq!(traces.protocol, Protocol::Grpc);
}

#[test]
fn only_signals_with_an_endpoint_are_exported() {
    let config = parse(&[(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "http://collector:4318/v1/traces",
    )])
    .unwrap();
    let otlp = config.otlp.unwrap();
    assert!(otlp.traces.is_some());
    assert!(otlp.metrics.is_none());
    assert!(otlp.logs.is_none());
}

#[test]
fn exporter_none_and_sdk_disabled_turn_export_off() {
    let config = parse(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_METRICS_EXPORTER", "none"),
    ])
    .unwrap();
    let otlp = config.otlp.unwrap();
    assert!(otlp.metrics.is_none());
    assert!(otlp.traces.is_some());

    let config = parse(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_SDK_DISABLED", "true"),
    ])
    .unwrap();
    assert_eq!(config.otlp, None);
}

#[test]
fn service_name_precedence() {
    let name = |vars: &[(&str, &str)]| parse(vars).unwrap().service_name;
    assert_eq!(
        name(&[
            ("OTEL_SERVICE_NAME", "otel"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=attr"),
            ("DATABRICKS_APP_NAME", "dbx"),
        ]),
        "otel"
    );
    assert_eq!(
        name(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=attr,team=core"),
            ("DATABRICKS_APP_NAME", "dbx"),
        ]),
        "attr"
    );
    assert_eq!(name(&[("DATABRICKS_APP_NAME", "dbx")]), "dbx");
    assert_eq!(name(&[]), binary_name());
}

#[test]
fn production_means_json_logs() {
    let config = parse(&[("APPKIT_ENV", "production")]).unwrap();
    assert_eq!(config.log_format, LogFormat::Json);
}

#[test]
fn databricks_apps_default_to_json_logs_like_the_host_defaults_to_production() {
    let config = parse(&[("DATABRICKS_APP_NAME", "dbx")]).unwrap();
    assert_eq!(config.log_format, LogFormat::Json);
    let config = parse(&[
        ("DATABRICKS_APP_NAME", "dbx"),
        ("APPKIT_ENV", "development"),
    ])
    .unwrap();
    assert_eq!(config.log_format, LogFormat::Pretty);
    assert_eq!(parse(&[]).unwrap().log_format, LogFormat::Pretty);
}

/// Property tests: every variable, given any value, parses to the documented value or
/// fails with problems that all name it; never a panic, never a silent default.
mod generated {
    use appkit_env::testing;
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::*;

    const MILLIS: [&str; 4] = [
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BLRP_SCHEDULE_DELAY",
    ];

    const HEADERS: [&str; 4] = [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    ];

    const OTHERS: [&str; 18] = [
        "RUST_LOG",
        "APPKIT_ENV",
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "DATABRICKS_APP_NAME",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_LOGS_EXPORTER",
        "OTEL_TRACES_SAMPLER",
    ];

    fn any_variable() -> impl Strategy<Value = &'static str> {
        let all: Vec<&'static str> = MILLIS
            .iter()
            .chain(&HEADERS)
            .chain(&OTHERS)
            .chain(&["OTEL_TRACES_SAMPLER_ARG"])
            .copied()
            .collect();
        select(all)
    }

    /// Any value, plus telemetry's own shapes (URLs, `key=value` lists, filters).
    fn values() -> impl Strategy<Value = String> {
        prop_oneof![
            testing::values(),
            "(?i)(otlp|none|grpc|http/protobuf|production)",
            "https?://[a-z]{1,8}(:[0-9]{1,6})?(/[a-z]{0,5})?",
            "[a-z.]{1,6}=[a-zA-Z0-9%]{0,8}(,[a-z]{1,4}=[%0-9a-fA-F]{0,6}){0,2}",
            "[a-z]{1,6}(=(trace|debug|info|warn|error|off|[a-z]{1,4}))?(,[a-z_]{1,6}=[a-z]{1,5}){0,2}",
        ]
    }

    /// The variable set to `value`, beside an endpoint and a ratio sampler so that every
    /// variable is read.
    fn parse_one(var: &str, value: &str) -> Result<TelemetryConfig, ConfigError> {
        let mut vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ];
        vars.retain(|(k, _)| *k != var);
        vars.push((var, value));
        parse(&vars)
    }

    /// The documented rule for milliseconds: a whole number up to `MAX_MILLIS`.
    fn whole_ms(value: &str) -> Option<u64> {
        testing::whole_number(value)
            .filter(|n| *n <= u128::from(appkit_env::MAX_MILLIS))
            .and_then(|n| u64::try_from(n).ok())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn every_variable_parses_or_names_itself(var in any_variable(), value in values()) {
            match parse_one(var, &value) {
                Ok(_) => {}
                Err(err) => {
                    prop_assert!(!value.trim().is_empty(), "blank {var} is unset: {err}");
                    for p in err.problems() {
                        prop_assert_eq!(p.variable(), var, "{}", err);
                    }
                    prop_assert!(err.to_string().contains(var), "{}", err);
                    if HEADERS.contains(&var) {
                        // Headers are secrets: only the redaction marker is shown.
                        for p in err.problems() {
                            prop_assert_eq!(p.value(), Some(appkit_env::REDACTED), "{}", err);
                        }
                    }
                }
            }
        }

        #[test]
        fn durations_are_whole_milliseconds(var in select(MILLIS.to_vec()), value in values()) {
            let result = parse_one(var, &value);
            let otlp = result.as_ref().ok().and_then(|c| c.otlp.clone());
            let got = otlp.map(|o| match var {
                "OTEL_EXPORTER_OTLP_TIMEOUT" => o.timeout,
                "OTEL_METRIC_EXPORT_INTERVAL" => o.metric_export_interval,
                "OTEL_BSP_SCHEDULE_DELAY" => o.traces_batch_delay,
                _ => o.logs_batch_delay,
            });
            if value.trim().is_empty() {
                prop_assert!(got.is_some());
            } else {
                match whole_ms(&value) {
                    Some(ms) => prop_assert_eq!(got, Some(Duration::from_millis(ms))),
                    None => prop_assert!(result.is_err(), "{value:?} must not default"),
                }
            }
        }

        #[test]
        fn sdk_disabled_is_one_boolean_spelling(value in values()) {
            let result = parse_one("OTEL_SDK_DISABLED", &value);
            match testing::boolean(&value) {
                Some(true) => prop_assert_eq!(result.unwrap().otlp, None),
                // Unset is `false`.
                Some(false) => prop_assert!(result.unwrap().otlp.is_some()),
                None if value.trim().is_empty() => prop_assert!(result.unwrap().otlp.is_some()),
                None => prop_assert!(result.is_err(), "{value:?} must not default"),
            }
        }
    }
}

#[test]
fn sdk_disabled_accepts_the_one_boolean_spelling() {
    let with = |v: &'static str| {
        parse(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", v),
        ])
    };
    assert_eq!(with("1").unwrap().otlp, None);
    assert_eq!(with("TRUE").unwrap().otlp, None);
    assert!(with("0").unwrap().otlp.is_some());
    let err = with("yes").unwrap_err();
    assert_eq!(err.problems()[0].variable(), "OTEL_SDK_DISABLED");
}
