//! Tests of the `normalize` module through its public API: the published
//! samples, one table per mapping rule, hostile input, and the stream driver.

use std::path::PathBuf;
use std::process::ExitCode;

use jcdi_forwarder::normalize::{
    normalize, normalize_stream, run_cli, NormalizeError, StreamStats,
};
use serde_json::{json, Value};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/normalize")
}

/// Normalizes `event` (serialized compactly) and returns the document.
fn norm(event: &Value) -> Value {
    let raw = event.to_string();
    match normalize(&raw) {
        Ok(doc) => doc,
        Err(e) => panic!("normalize failed on {raw}: {e}"),
    }
}

/// The value at a JSON pointer, `None` when absent.
fn at<'a>(doc: &'a Value, pointer: &str) -> Option<&'a Value> {
    doc.pointer(pointer)
}

// ---------------------------------------------------------------------------
// Published samples
// ---------------------------------------------------------------------------

#[test]
fn every_sample_matches_its_expected_document() {
    let dir = vectors_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "sample folder {} is missing or unreadable ({e}); it should hold the format's \
             normalized samples as *.json files with `raw` and `expected`",
            dir.display()
        )
    });
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable folder entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "expected the ten samples in {}, found {}",
        dir.display(),
        paths.len()
    );

    let mut failures = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).expect("readable sample");
        let sample: Value = serde_json::from_str(&text).expect("sample is JSON");
        let raw = sample["raw"].as_str().expect("sample has a `raw` string");
        let expected = &sample["expected"];
        match normalize(raw) {
            Ok(doc) if &doc == expected => {}
            Ok(doc) => failures.push(format!(
                "{}:\n  expected {}\n  got      {}",
                path.display(),
                expected,
                doc
            )),
            Err(e) => failures.push(format!("{}: error {e}", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} sample(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Mapping rules, on events the samples do not cover
// ---------------------------------------------------------------------------

#[test]
fn empty_object_gives_only_message_and_vendor() {
    let doc = normalize("{}").expect("an empty object is a valid event");
    assert_eq!(
        doc,
        json!({"message": "{}", "observer": {"vendor": "Jumpcloud"}})
    );
}

#[test]
fn message_is_the_raw_text_unchanged() {
    let raw = "{ \"id\" : \"a\",\n\"event_type\":\"x\"  }";
    let doc = normalize(raw).expect("valid");
    assert_eq!(doc["message"], raw);
}

#[test]
fn empty_strings_and_nulls_never_produce_a_field() {
    let mut event = serde_json::Map::new();
    for key in [
        "event_type",
        "id",
        "timestamp",
        "client_ip",
        "username",
        "process_name",
        "error_message",
    ] {
        event.insert(key.into(), json!(""));
    }
    for (key, members) in [
        ("initiated_by", &["username", "email", "id"][..]),
        ("resource", &["username", "email", "id"][..]),
        ("system", &["id", "hostname"][..]),
        (
            "useragent",
            &[
                "device",
                "name",
                "version",
                "os_name",
                "os_version",
                "os_full",
            ][..],
        ),
        ("application", &["name"][..]),
        ("event", &["service"][..]),
    ] {
        let sub: serde_json::Map<String, Value> =
            members.iter().map(|m| (m.to_string(), json!(""))).collect();
        event.insert(key.into(), Value::Object(sub));
    }
    let empty = Value::Object(event);
    assert_eq!(
        norm(&empty),
        json!({"message": empty.to_string(), "observer": {"vendor": "Jumpcloud"}})
    );

    // The same with nulls everywhere, including success flags and collections.
    let nulls = json!({
        "event_type": null, "id": null, "timestamp": null, "client_ip": null, "username": null,
        "process_name": null, "error_message": null, "success": null, "sso_token_success": null,
        "initiated_by": {"username": null, "email": null, "id": null},
        "resource": null, "system": null, "useragent": {"name": null}, "application": null,
        "changes": null, "association": null, "event": null
    });
    assert_eq!(
        norm(&nulls),
        json!({"message": nulls.to_string(), "observer": {"vendor": "Jumpcloud"}})
    );
}

#[test]
fn event_action_and_jumpcloud_ids() {
    let doc = norm(&json!({"event_type": "user_create", "id": "abc123"}));
    assert_eq!(at(&doc, "/event/action"), Some(&json!("user_create")));
    assert_eq!(
        at(&doc, "/jumpcloud/event_type"),
        Some(&json!("user_create"))
    );
    assert_eq!(at(&doc, "/jumpcloud/id"), Some(&json!("abc123")));
    // Unknown event types get no category/type.
    assert_eq!(at(&doc, "/event/category"), None);
    assert_eq!(at(&doc, "/event/type"), None);
}

#[test]
fn category_and_type_by_event_type() {
    let table = [
        ("user_password_warning_email", Some("iam")),
        ("user_password_reset_request", Some("iam")),
        ("user_activation_email", Some("iam")),
        ("user_unlocked", Some("iam")),
        ("ldap_bind", Some("authentication")),
        ("user_login_attempt", Some("authentication")),
        ("sso_auth", Some("authentication")),
        ("admin_login_attempt", Some("authentication")),
        ("login_attempt", Some("authentication")),
        ("user_locked", None),
        ("radius_auth_attempt", None),
        ("totally_new_type", None),
        ("LOGIN_ATTEMPT", None), // exact, case-sensitive match
    ];
    for (event_type, category) in table {
        let doc = norm(&json!({ "event_type": event_type }));
        match category {
            Some(c) => {
                assert_eq!(
                    at(&doc, "/event/category"),
                    Some(&json!([c])),
                    "{event_type}"
                );
                assert_eq!(
                    at(&doc, "/event/type"),
                    Some(&json!(["info"])),
                    "{event_type}"
                );
            }
            None => {
                assert_eq!(at(&doc, "/event/category"), None, "{event_type}");
                assert_eq!(at(&doc, "/event/type"), None, "{event_type}");
            }
        }
        assert_eq!(at(&doc, "/event/action"), Some(&json!(event_type)));
    }
}

#[test]
fn event_module_comes_from_event_service_not_service() {
    let doc = norm(&json!({"service": "directory"}));
    assert_eq!(at(&doc, "/event/module"), None);
    let doc = norm(&json!({"event": {"service": "sso"}}));
    assert_eq!(at(&doc, "/event/module"), Some(&json!("sso")));
}

#[test]
fn timestamps() {
    let table = [
        ("2023-06-15T15:16:41Z", Some("2023-06-15T15:16:41Z")),
        (
            "2023-06-16T14:06:45.921Z",
            Some("2023-06-16T14:06:45.921000Z"),
        ),
        (
            "2023-06-16T14:06:45.000Z",
            Some("2023-06-16T14:06:45.000000Z"),
        ),
        (
            "2023-06-16T14:06:45.9Z",
            Some("2023-06-16T14:06:45.900000Z"),
        ),
        (
            "2023-06-16T14:06:45.123456Z",
            Some("2023-06-16T14:06:45.123456Z"),
        ),
        // Truncated, not rounded.
        (
            "2023-06-16T14:06:45.1234569Z",
            Some("2023-06-16T14:06:45.123456Z"),
        ),
        (
            "2023-06-15T13:45:59.812449824Z",
            Some("2023-06-15T13:45:59.812449Z"),
        ),
        (
            "2023-06-15T13:45:59.999999999Z",
            Some("2023-06-15T13:45:59.999999Z"),
        ),
        // Offsets are converted to UTC.
        ("2023-06-16T16:06:45+02:00", Some("2023-06-16T14:06:45Z")),
        (
            "2023-06-16T00:30:00.5-01:00",
            Some("2023-06-16T01:30:00.500000Z"),
        ),
        (
            "2024-01-01T00:59:59.25+01:00",
            Some("2023-12-31T23:59:59.250000Z"),
        ),
        // No offset: read as UTC.
        ("2023-06-16T14:06:45", Some("2023-06-16T14:06:45Z")),
        ("2023-06-16T14:06:45.5", Some("2023-06-16T14:06:45.500000Z")),
        // Not a date: no @timestamp.
        ("yesterday", None),
        ("2023-13-45T99:99:99Z", None),
        ("1686924405", None),
    ];
    for (input, expected) in table {
        let doc = norm(&json!({ "timestamp": input }));
        assert_eq!(
            at(&doc, "/@timestamp").and_then(Value::as_str),
            expected,
            "timestamp {input}"
        );
    }
    // A number is not read as an epoch.
    let doc = norm(&json!({"timestamp": 1686924405}));
    assert_eq!(at(&doc, "/@timestamp"), None);
}

#[test]
fn client_and_source_addresses() {
    // (client_ip, valid)
    let table = [
        ("192.0.2.10", true),
        ("2001:db8::1", true),
        ("2001:DB8:0:0:0:0:0:1", true),
        ("::1", true),
        ("::ffff:192.0.2.1", true),
        ("not-an-ip", false),
        ("1.2.3", false),
        ("1.2.3.256", false),
        ("01.2.3.4", false),
        ("1.2.3.4:443", false),
        (" 1.2.3.4", false),
        ("[2001:db8::1]", false),
    ];
    for (ip, valid) in table {
        let doc = norm(&json!({ "client_ip": ip }));
        // client.* always mirrors client_ip as received.
        assert_eq!(at(&doc, "/client/ip"), Some(&json!(ip)), "{ip}");
        assert_eq!(at(&doc, "/client/address"), Some(&json!(ip)), "{ip}");
        if valid {
            assert_eq!(at(&doc, "/source/ip"), Some(&json!(ip)), "{ip}");
            assert_eq!(at(&doc, "/source/address"), Some(&json!(ip)), "{ip}");
            assert_eq!(at(&doc, "/related/ip"), Some(&json!([ip])), "{ip}");
        } else {
            assert_eq!(at(&doc, "/source"), None, "{ip}");
            assert_eq!(at(&doc, "/related"), None, "{ip}");
        }
    }
    let doc = norm(&json!({}));
    assert_eq!(at(&doc, "/client"), None);
}

#[test]
fn users_and_related_user() {
    let doc = norm(&json!({
        "username": "zoe",
        "initiated_by": {"username": "adam", "email": "adam@example.com", "id": "i1", "type": "admin"},
        "resource": {"username": "target.user", "email": "target@example.com", "id": "r1"}
    }));
    assert_eq!(at(&doc, "/user/name"), Some(&json!("zoe")));
    assert_eq!(
        at(&doc, "/source/user"),
        Some(&json!({"name": "adam", "email": "adam@example.com", "id": "i1"}))
    );
    assert_eq!(
        at(&doc, "/user/target"),
        Some(&json!({"name": "target.user", "email": "target@example.com", "id": "r1"}))
    );
    // user.name and source.user.name only, sorted; never the target nor e-mails.
    assert_eq!(at(&doc, "/related/user"), Some(&json!(["adam", "zoe"])));

    // Same name twice appears once.
    let doc = norm(&json!({"username": "same", "initiated_by": {"username": "same"}}));
    assert_eq!(at(&doc, "/related/user"), Some(&json!(["same"])));

    // Only a target: no related.user at all.
    let doc = norm(&json!({"resource": {"username": "t"}}));
    assert_eq!(at(&doc, "/related"), None);
    assert_eq!(at(&doc, "/user/name"), None);
    assert_eq!(at(&doc, "/user/target/name"), Some(&json!("t")));
}

#[test]
fn host_and_process() {
    let doc = norm(
        &json!({"system": {"id": "s1", "hostname": "LAPTOP-1", "os": "Linux"}, "process_name": "sshd"}),
    );
    assert_eq!(
        at(&doc, "/host"),
        Some(&json!({"id": "s1", "name": "LAPTOP-1"}))
    );
    assert_eq!(at(&doc, "/process"), Some(&json!({"name": "sshd"})));
    // auth_context.system is not the host.
    let doc = norm(&json!({"auth_context": {"system": {"id": "s1", "hostname": "h"}}}));
    assert_eq!(at(&doc, "/host"), None);
}

#[test]
fn outcome_from_success() {
    // (success, error_message, outcome, outcome_reason)
    let table: [(Value, Value, Option<&str>, Option<&str>); 8] = [
        (json!(true), json!(null), Some("success"), None),
        (
            json!(true),
            json!("ignored on success"),
            Some("success"),
            None,
        ),
        (
            json!(false),
            json!("bad password"),
            Some("failure"),
            Some("bad password"),
        ),
        (json!(false), json!(""), Some("failure"), None),
        (json!(false), json!(null), Some("failure"), None),
        (json!(null), json!("x"), None, None),
        (json!("false"), json!("x"), None, None),
        (json!(0), json!("x"), None, None),
    ];
    for (success, message, outcome, reason) in table {
        let doc = norm(
            &json!({"event_type": "user_login_attempt", "success": success, "error_message": message}),
        );
        assert_eq!(
            at(&doc, "/action/outcome").and_then(Value::as_str),
            outcome,
            "success={success}"
        );
        assert_eq!(
            at(&doc, "/action/outcome_reason").and_then(Value::as_str),
            reason,
            "success={success}"
        );
    }
    // `success` absent.
    let doc = norm(&json!({"event_type": "user_update", "error_message": "x"}));
    assert_eq!(at(&doc, "/action"), None);
}

#[test]
fn sso_auth_outcome_and_service() {
    let doc = norm(&json!({
        "event_type": "sso_auth", "sso_token_success": true, "success": false,
        "error_message": "first", "application": {"name": "slack", "display_label": "Slack"}
    }));
    // sso_token_success has the last word; the reason set by `success: false`
    // stays, as in Sekoia's pipeline.
    assert_eq!(at(&doc, "/action/outcome"), Some(&json!("success")));
    assert_eq!(at(&doc, "/action/outcome_reason"), Some(&json!("first")));
    assert_eq!(at(&doc, "/service/name"), Some(&json!("slack")));

    let doc = norm(
        &json!({"event_type": "sso_auth", "sso_token_success": false, "success": true, "error_message": "denied"}),
    );
    assert_eq!(
        at(&doc, "/action"),
        Some(&json!({"outcome": "failure", "outcome_reason": "denied"}))
    );

    // No sso_token_success: `success` decides.
    let doc = norm(&json!({"event_type": "sso_auth", "success": true}));
    assert_eq!(at(&doc, "/action/outcome"), Some(&json!("success")));
    let doc = norm(&json!({"event_type": "sso_auth"}));
    assert_eq!(at(&doc, "/action"), None);
    assert_eq!(at(&doc, "/service"), None);

    // Other event types ignore sso_token_success and application.
    let doc = norm(
        &json!({"event_type": "login_attempt", "sso_token_success": false, "application": {"name": "slack"}}),
    );
    assert_eq!(at(&doc, "/action"), None);
    assert_eq!(at(&doc, "/service"), None);
}

#[test]
fn user_agent_fields() {
    let doc = norm(&json!({"useragent": {
        "device": "iPhone", "name": "Mobile Safari", "version": "17.1", "major": "17",
        "os_name": "iOS", "os_version": "17.1.2", "os_full": "iOS 17.1.2", "os": "iOS"
    }}));
    assert_eq!(
        at(&doc, "/user_agent"),
        Some(&json!({
            "device": {"name": "iPhone"}, "name": "Mobile Safari", "version": "17.1",
            "os": {"name": "iOS", "version": "17.1.2", "full": "iOS 17.1.2"}
        }))
    );
    let doc = norm(&json!({"useragent": {"name": "curl"}}));
    assert_eq!(at(&doc, "/user_agent"), Some(&json!({"name": "curl"})));
    let doc = norm(&json!({"useragent": "curl/8.0"}));
    assert_eq!(at(&doc, "/user_agent"), None);
}

#[test]
fn changes_keep_values_only_for_listed_fields() {
    let doc = norm(&json!({"changes": [
        {"field": "activated", "from": false, "to": true},
        {"field": "password_date", "from": null, "to": "2024-01-02T03:04:05Z"},
        {"field": "state", "from": "STAGED", "to": "ACTIVATED"},
        {"field": "suspended", "from": true, "to": false},
        {"field": "enable_user_portal_multifactor", "from": 0, "to": 1},
        {"field": "mfa.exclusion", "from": "", "to": true},
        {"field": "mfa.exclusionUntil", "from": 1.5, "to": -2},
        {"field": "totp_enabled", "to": true},
        {"field": "email", "from": "A@B.C", "to": "d@e.f"},
        {"field": "State", "from": "X", "to": "Y"},
        {"field": "groups", "from": ["A"], "to": {"K": "V"}}
    ]}));
    assert_eq!(
        at(&doc, "/jumpcloud/changes"),
        Some(&json!([
            {"field": "activated", "from": "false", "to": "true"},
            {"field": "password_date", "from": "none", "to": "2024-01-02t03:04:05z"},
            {"field": "state", "from": "staged", "to": "activated"},
            {"field": "suspended", "from": "true", "to": "false"},
            {"field": "enable_user_portal_multifactor", "from": "0", "to": "1"},
            {"field": "mfa.exclusion", "to": "true"},
            {"field": "mfa.exclusionUntil", "from": "1.5", "to": "-2"},
            {"field": "totp_enabled", "to": "true"},
            {"field": "email"},
            {"field": "State"},
            {"field": "groups"}
        ]))
    );
}

#[test]
fn changes_edge_cases() {
    // Structured values of a listed field become Python's repr, lower-cased.
    let doc = norm(&json!({"changes": [{"field": "state", "from": ["A", 1], "to": {"K": null}}]}));
    assert_eq!(
        at(&doc, "/jumpcloud/changes"),
        Some(&json!([{"field": "state", "from": "['a', 1]", "to": "{'k': none}"}]))
    );
    // Entries without a usable field name are dropped; the rest stays in order.
    let doc = norm(
        &json!({"changes": [{"from": 1}, "oops", {"field": ""}, {"field": null}, {"field": "b"}, {"field": "a"}]}),
    );
    assert_eq!(
        at(&doc, "/jumpcloud/changes"),
        Some(&json!([{"field": "b"}, {"field": "a"}]))
    );
    // Nothing usable, or not an array: no field at all.
    for changes in [
        json!([]),
        json!([{}]),
        json!({"field": "state"}),
        json!("state"),
        json!(3),
    ] {
        let doc = norm(&json!({ "changes": changes }));
        assert_eq!(at(&doc, "/jumpcloud/changes"), None, "changes = {changes}");
    }
    // Non-ASCII values are lower-cased as Unicode text.
    let doc =
        norm(&json!({"changes": [{"field": "state", "from": "ÉTAT ΣΟΦΊΑ", "to": "İSTANBUL"}]}));
    assert_eq!(
        at(&doc, "/jumpcloud/changes/0"),
        Some(&json!({"field": "state", "from": "état σοφία", "to": "i̇stanbul"}))
    );
    // Escaped text is decoded before lower-casing.
    let doc = normalize(r#"{"changes":[{"field":"state","from":"\u0041CTIVATED","to":"A\"B"}]}"#)
        .expect("valid");
    assert_eq!(
        at(&doc, "/jumpcloud/changes/0"),
        Some(&json!({"field": "state", "from": "activated", "to": "a\"b"}))
    );
}

/// Change values of every JSON type, as raw JSON text, and what the format's
/// `{{change.from | string() | lower()}}` makes of them (`None`: no member,
/// the rendering is empty). The expected texts are Python 3.11's
/// `str(json.loads(value)).lower()`.
const CHANGE_VALUES: &[(&str, Option<&str>)] = &[
    ("null", Some("none")),
    ("true", Some("true")),
    ("false", Some("false")),
    ("0", Some("0")),
    ("-0", Some("0")),
    ("1", Some("1")),
    ("-2", Some("-2")),
    ("42", Some("42")),
    ("9007199254740993", Some("9007199254740993")),
    ("18446744073709551616", Some("18446744073709551616")),
    (
        "-123456789012345678901234567890",
        Some("-123456789012345678901234567890"),
    ),
    ("100", Some("100")),
    ("1.0", Some("1.0")),
    ("-0.0", Some("-0.0")),
    ("0.0", Some("0.0")),
    ("1.5", Some("1.5")),
    ("-2.75", Some("-2.75")),
    ("0.1", Some("0.1")),
    ("0.30000000000000004", Some("0.30000000000000004")),
    ("3.14159265358979323846", Some("3.141592653589793")),
    ("123456789.123456789", Some("123456789.12345679")),
    ("1e2", Some("100.0")),
    ("1E+20", Some("1e+20")),
    ("1e20", Some("1e+20")),
    ("1.5e300", Some("1.5e+300")),
    ("1e16", Some("1e+16")),
    ("1e15", Some("1000000000000000.0")),
    ("9999999999999999", Some("9999999999999999")),
    ("9999999999999999.0", Some("1e+16")),
    ("1234567890123456.0", Some("1234567890123456.0")),
    ("1e-5", Some("1e-05")),
    ("0.0001", Some("0.0001")),
    ("0.00001", Some("1e-05")),
    ("2.5e-7", Some("2.5e-07")),
    ("5e-324", Some("5e-324")),
    ("1.7976931348623157e308", Some("1.7976931348623157e+308")),
    ("1e-400", Some("0.0")),
    ("1E400", Some("inf")),
    ("-1E400", Some("-inf")),
    (r#""ACTIVATED""#, Some("activated")),
    (r#""""#, None),
    (r#"" ""#, Some(" ")),
    (r#""It's""#, Some("it's")),
    (r#""say \"Hi\"""#, Some(r#"say "hi""#)),
    (r#""back\\slash""#, Some(r#"back\slash"#)),
    (r#""Tab\tNewline\n""#, Some("tab\tnewline\n")),
    (r#""\u0000\u001F\u007f""#, Some("\u{0}\u{1f}\u{7f}")),
    (r#""ÉTAT ΣΟΦΊΑ""#, Some("état σοφία")),
    (r#""日本語""#, Some("日本語")),
    (r#""🦊""#, Some("🦊")),
    (r#""\ud83e\udd8a""#, Some("🦊")),
    (r#""\u00A0""#, Some("\u{a0}")),
    (r#""\u2028""#, Some("\u{2028}")),
    (r#""\u200b""#, Some("\u{200b}")),
    (r#""\udb40\udc01""#, Some("\u{e0001}")),
    ("[]", Some("[]")),
    ("{}", Some("{}")),
    (
        r#"[ 1 , "A" , null , true , false , 1.5 , 1E400 ]"#,
        Some("[1, 'a', none, true, false, 1.5, inf]"),
    ),
    ("[[1, [2, [3, []]]]]", Some("[[1, [2, [3, []]]]]")),
    (r#"["It's"]"#, Some(r#"["it's"]"#)),
    (r#"["a\"b"]"#, Some(r#"['a"b']"#)),
    (r#"["It's \"both\""]"#, Some(r#"['it\'s "both"']"#)),
    (r#"["\n\t\r\\\b\f/"]"#, Some(r#"['\n\t\r\\\x08\x0c/']"#)),
    (
        r#"["\u0000", "\u001f", "\u007F", "\u0080", "\u00a0", "\u00ad"]"#,
        Some(r#"['\x00', '\x1f', '\x7f', '\x80', '\xa0', '\xad']"#),
    ),
    (
        r#"["ÉTAT", "🦊", "日本語", "\u2028", "\u200B"]"#,
        Some(r#"['état', '🦊', '日本語', '\u2028', '\u200b']"#),
    ),
    (
        r#"["\udb40\udc01", "\ud800", "\udc00x", "\ud800\u0041"]"#,
        Some(r#"['\u000e0001', '\ud800', '\udc00x', '\ud800a']"#),
    ),
    (r#"{"K": "V"}"#, Some("{'k': 'v'}")),
    (
        r#"{"a": 1, "b": [true, null]}"#,
        Some("{'a': 1, 'b': [true, none]}"),
    ),
    (
        r#"{ "a" : 1 , "b" : 2 , "a" : 3 }"#,
        Some("{'a': 3, 'b': 2}"),
    ),
    (
        r#"{"Nested": {"Deep": [{"X": null, "Y": {}}]}}"#,
        Some("{'nested': {'deep': [{'x': none, 'y': {}}]}}"),
    ),
    (
        r#"{"It's": "x", "\u0000": 1e20, "-0": -0, "f": -0.0}"#,
        Some(r#"{"it's": 'x', '\x00': 1e+20, '-0': 0, 'f': -0.0}"#),
    ),
    // A lone surrogate cannot be Rust text: U+FFFD stands in for it.
    (r#""A\ud800""#, Some("a\u{fffd}")),
];

/// An event with two changes holding `value` as `from` and `to`: one of a
/// field whose values the format keeps, one of a field it does not.
fn event_with_change_values(value: &str) -> String {
    format!(
        r#"{{"changes":[{{"field":"totp_enabled","from":{value},"to":{value}}},{{"field":"company","from":{value},"to":{value}}}]}}"#
    )
}

#[test]
fn change_values_render_as_python_str_lowercased() {
    let mut failures = Vec::new();
    for &(value, expected) in CHANGE_VALUES {
        let raw = event_with_change_values(value);
        let doc = normalize(&raw).unwrap_or_else(|e| panic!("normalize failed on {raw}: {e}"));
        let mut listed = json!({"field": "totp_enabled"});
        if let Some(text) = expected {
            listed["from"] = json!(text);
            listed["to"] = json!(text);
        }
        // Another field keeps its name only, whatever the value.
        let want = json!([listed, {"field": "company"}]);
        let got = at(&doc, "/jumpcloud/changes");
        if got != Some(&want) {
            failures.push(format!("{value}:\n  expected {want}\n  got      {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} value(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The stream writes the same documents.
    let input: Vec<String> = CHANGE_VALUES
        .iter()
        .map(|(value, _)| event_with_change_values(value))
        .collect();
    let (out, err, stats) = run_stream(input.join("\n").as_bytes(), "values");
    assert_eq!(err, "");
    assert_eq!(stats.written, CHANGE_VALUES.len() as u64);
    for (raw, line) in input.iter().zip(out.lines()) {
        let doc = normalize(raw).expect("valid");
        assert_eq!(line, serde_json::to_string(&doc).expect("serializable"));
    }
}

#[test]
fn every_listed_field_renders_null_and_absent_differently() {
    let fields = [
        "activated",
        "password_date",
        "state",
        "suspended",
        "enable_user_portal_multifactor",
        "mfa.exclusion",
        "mfa.exclusionUntil",
        "totp_enabled",
    ];
    for field in fields {
        let doc = norm(&json!({"changes": [
            {"field": field, "from": null, "to": 1},
            {"field": field, "to": null},
            {"field": field, "from": ""}
        ]}));
        assert_eq!(
            at(&doc, "/jumpcloud/changes"),
            Some(&json!([
                {"field": field, "from": "none", "to": "1"},
                {"field": field, "to": "none"},
                {"field": field}
            ])),
            "field {field}"
        );
    }
    // Names are matched exactly: another case is another field.
    let doc = norm(&json!({"changes": [{"field": "TOTP_enabled", "from": null, "to": 1}]}));
    assert_eq!(
        at(&doc, "/jumpcloud/changes"),
        Some(&json!([{"field": "TOTP_enabled"}]))
    );
}

#[test]
fn change_values_render_up_to_128_levels_deep() {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let doc = normalize(&event_with_change_values(&nested(128))).expect("valid");
    assert_eq!(
        at(&doc, "/jumpcloud/changes/0/from"),
        Some(&json!(nested(128)))
    );
    // One level more: that value is dropped, the change and the event kept.
    let doc = normalize(&event_with_change_values(&nested(129))).expect("valid");
    assert_eq!(
        at(&doc, "/jumpcloud/changes"),
        Some(&json!([{"field": "totp_enabled"}, {"field": "company"}]))
    );
}

#[test]
fn association_without_nulls() {
    let doc = norm(&json!({"association": {
        "op": "remove", "attributes": null, "action_source": "",
        "connection": {"from": {"name": "g", "type": "user_group", "extra": null}, "to": {"name": null, "object_id": "o"}},
        "list": [1, null, "x", ""], "empty": {}, "count": 0, "flag": false
    }}));
    assert_eq!(
        at(&doc, "/jumpcloud/association"),
        Some(&json!({
            "op": "remove",
            "connection": {"from": {"name": "g", "type": "user_group"}, "to": {"object_id": "o"}},
            "list": [1, "x"], "empty": {}, "count": 0, "flag": false
        }))
    );
    for association in [
        json!(null),
        json!({}),
        json!({"a": null, "b": ""}),
        json!(""),
    ] {
        let doc = norm(&json!({ "association": association }));
        assert_eq!(
            at(&doc, "/jumpcloud/association"),
            None,
            "association = {association}"
        );
    }
}

#[test]
fn non_ascii_text_passes_through() {
    let doc = norm(&json!({
        "username": "jérôme.dupont", "initiated_by": {"username": "Željko", "email": "ž@例え.jp"},
        "resource": {"username": "山田太郎"}, "error_message": "mot de passe invalide ✗", "success": false,
        "system": {"hostname": "PC-ÖÄÜ"}, "useragent": {"name": "Navigateur 🦊"}
    }));
    assert_eq!(at(&doc, "/user/name"), Some(&json!("jérôme.dupont")));
    assert_eq!(at(&doc, "/source/user/name"), Some(&json!("Željko")));
    assert_eq!(at(&doc, "/source/user/email"), Some(&json!("ž@例え.jp")));
    assert_eq!(at(&doc, "/user/target/name"), Some(&json!("山田太郎")));
    assert_eq!(
        at(&doc, "/action/outcome_reason"),
        Some(&json!("mot de passe invalide ✗"))
    );
    assert_eq!(at(&doc, "/host/name"), Some(&json!("PC-ÖÄÜ")));
    assert_eq!(at(&doc, "/user_agent/name"), Some(&json!("Navigateur 🦊")));
    assert_eq!(
        at(&doc, "/related/user"),
        Some(&json!(["jérôme.dupont", "Željko"]))
    );
    // \u escapes (including a surrogate pair) decode to the same text.
    let doc = normalize(r#"{"username":"j\u00e9r\u00f4me \ud83e\udd8a"}"#).expect("valid");
    assert_eq!(at(&doc, "/user/name"), Some(&json!("jérôme 🦊")));
}

#[test]
fn odd_value_types_are_read_leniently() {
    // Numbers are rendered as text; booleans, arrays and objects give nothing.
    let doc = norm(&json!({
        "id": 12345, "event_type": ["sso_auth"], "username": true, "process_name": {"name": "x"},
        "client_ip": 1234, "initiated_by": "someone", "resource": [1, 2], "system": 7,
        "application": false, "error_message": 3.25, "success": false
    }));
    assert_eq!(at(&doc, "/jumpcloud/id"), Some(&json!("12345")));
    assert_eq!(at(&doc, "/event"), None);
    assert_eq!(at(&doc, "/user"), None);
    assert_eq!(at(&doc, "/process"), None);
    assert_eq!(at(&doc, "/client/ip"), Some(&json!("1234")));
    assert_eq!(at(&doc, "/source"), None);
    assert_eq!(at(&doc, "/host"), None);
    assert_eq!(at(&doc, "/action/outcome_reason"), Some(&json!("3.25")));
}

#[test]
fn duplicate_keys_last_one_wins() {
    let doc = normalize(
        r#"{"id":"first","id":"second","initiated_by":{"id":"a"},"initiated_by":{"email":"b@c"}}"#,
    )
    .expect("valid");
    assert_eq!(at(&doc, "/jumpcloud/id"), Some(&json!("second")));
    assert_eq!(at(&doc, "/source/user"), Some(&json!({"email": "b@c"})));
}

// ---------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------

#[test]
fn non_objects_are_errors_with_clear_messages() {
    let table = [
        ("[1,2,3]", "expected a JSON object, found an array"),
        ("42", "expected a JSON object, found a number"),
        ("-1.5e3", "expected a JSON object, found a number"),
        ("\"text\"", "expected a JSON object, found a string"),
        ("true", "expected a JSON object, found a boolean"),
        ("null", "expected a JSON object, found null"),
    ];
    for (input, message) in table {
        let err = normalize(input).expect_err(input);
        assert!(
            matches!(err, NormalizeError::NotAnObject(_)),
            "{input}: {err:?}"
        );
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn broken_json_is_an_error() {
    let inputs = [
        "",
        "   ",
        "{",
        "{\"id\":",
        "{\"id\":\"abc",
        "{\"id\":\"a\"",
        "{\"id\":\"a\"} trailing",
        "{\"id\":\"a\"}{\"id\":\"b\"}",
        "{'id':'a'}",
        "{\"changes\":[{\"field\":\"state\",\"from\":}]}",
        "[1,2",
        "nul",
        // A lone surrogate is rejected where the value is read.
        "{\"username\":\"\\ud800\"}",
        "\u{feff}{}",
    ];
    for input in inputs {
        let err = normalize(input).expect_err(input);
        assert!(
            matches!(err, NormalizeError::InvalidJson(_)),
            "{input:?}: {err:?}"
        );
        assert!(err.to_string().starts_with("not valid JSON: "), "{err}");
    }
}

#[test]
fn deep_nesting_never_overflows_the_stack() {
    // serde_json skips unread values without recursing, and stops building
    // values (association, change values) at its recursion limit of 128, so
    // no depth can overflow the stack. Each case checks the actual outcome.
    let depth = 10_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));

    // Valid JSON, but an array.
    assert!(matches!(
        normalize(&arrays),
        Err(NormalizeError::NotAnObject("an array"))
    ));
    // An object whose only member is unknown: skipped, the event is kept.
    let doc = normalize(&objects).expect("unknown deep member is skipped");
    assert_eq!(
        doc,
        json!({"message": objects, "observer": {"vendor": "Jumpcloud"}})
    );
    // Deep value in an ignored or a text field: skipped.
    for input in [
        format!("{{\"geoip\":{arrays},\"id\":\"x\"}}"),
        format!("{{\"username\":{objects},\"id\":\"x\"}}"),
    ] {
        let doc = normalize(&input).expect("deep unread value is skipped");
        assert_eq!(at(&doc, "/jumpcloud/id"), Some(&json!("x")));
        assert_eq!(at(&doc, "/user"), None);
    }
    // The association is built as a value: past the limit the event is refused.
    let err = normalize(&format!("{{\"association\":{objects}}}")).expect_err("too deep to build");
    assert!(matches!(err, NormalizeError::InvalidJson(_)));
    assert!(err.to_string().contains("recursion limit"), "{err}");
    // A listed change with a value too deep to render loses that value only.
    let doc = normalize(&format!(
        "{{\"changes\":[{{\"field\":\"state\",\"from\":{arrays},\"to\":\"X\"}}]}}"
    ))
    .expect("change values are kept raw while parsing");
    assert_eq!(
        at(&doc, "/jumpcloud/changes"),
        Some(&json!([{"field": "state", "to": "x"}]))
    );
    // Far deeper still: skipping is iterative.
    let very_deep = format!(
        "{{\"geoip\":{}{}}}",
        "[".repeat(1_000_000),
        "]".repeat(1_000_000)
    );
    assert!(normalize(&very_deep).is_ok());
    // Moderate nesting inside a kept value is fine.
    let nested = format!(
        "{{\"association\":{}1{}}}",
        "{\"a\":".repeat(50),
        "}".repeat(50)
    );
    let doc = normalize(&nested).expect("50 levels are within the limit");
    assert!(at(&doc, "/jumpcloud/association/a/a/a").is_some());
}

#[test]
fn lone_surrogates_in_unread_fields_are_skipped() {
    let raw = r#"{"geoip":"\ud800","id":"x"}"#;
    let doc = normalize(raw).expect("unread members are not decoded");
    assert_eq!(at(&doc, "/jumpcloud/id"), Some(&json!("x")));
    assert_eq!(doc["message"], raw);
}

#[test]
fn huge_strings_are_handled() {
    let big = "x".repeat(8 * 1024 * 1024);
    let doc = norm(&json!({"username": big, "geoip": {"blob": big}}));
    assert_eq!(
        at(&doc, "/user/name").and_then(Value::as_str).map(str::len),
        Some(big.len())
    );
    // Truncated inside a huge string.
    let truncated = format!("{{\"username\":\"{big}");
    assert!(matches!(
        normalize(&truncated),
        Err(NormalizeError::InvalidJson(_))
    ));
}

#[test]
fn garbage_never_panics() {
    // A cheap deterministic generator over a JSON-ish alphabet, plus every
    // prefix of a real sample: each call must return, Ok or Err.
    let alphabet = b"{}[]\":,0123456789.eE+-tfnrulasx \\u\n";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        let len = (state % 64) as usize;
        let mut s = String::with_capacity(len);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            s.push(alphabet[(state % alphabet.len() as u64) as usize] as char);
        }
        let _ = normalize(&s);
    }
    let sample =
        std::fs::read_to_string(vectors_dir().join("user_update_success_2.json")).expect("sample");
    let sample: Value = serde_json::from_str(&sample).expect("sample JSON");
    let raw = sample["raw"].as_str().expect("raw");
    let mut errors = 0;
    for end in (0..raw.len()).filter(|&i| raw.is_char_boundary(i)) {
        if normalize(&raw[..end]).is_err() {
            errors += 1;
        }
    }
    // Every strict prefix of an object is truncated JSON.
    assert_eq!(errors, raw.len());
}

// ---------------------------------------------------------------------------
// Stream driver and subcommand
// ---------------------------------------------------------------------------

fn run_stream(input: &[u8], source: &str) -> (String, String, StreamStats) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let stats =
        normalize_stream(input, source, &mut out, &mut err).expect("in-memory I/O cannot fail");
    (
        String::from_utf8(out).expect("output is UTF-8"),
        String::from_utf8(err).expect("errors are UTF-8"),
        stats,
    )
}

#[test]
fn stream_reports_bad_lines_by_number_and_keeps_going() {
    let input =
        b"{\"id\":\"1\"}\n[1,2]\n\n   \n{\"id\":\"2\"}\r\n{\"id\":\n\xff\xfe\n{\"id\":\"3\"}";
    let (out, err, stats) = run_stream(input, "events.jsonl");
    assert_eq!(
        stats,
        StreamStats {
            written: 3,
            skipped: 3
        }
    );

    let docs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("output line is JSON"))
        .collect();
    let ids: Vec<&str> = docs
        .iter()
        .map(|d| d["jumpcloud"]["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
    // The CRLF line ending is not part of the message; a missing final newline is fine.
    assert_eq!(docs[1]["message"], "{\"id\":\"2\"}");
    assert_eq!(docs[2]["message"], "{\"id\":\"3\"}");
    assert!(out.ends_with('\n'));

    let errors: Vec<&str> = err.lines().collect();
    assert_eq!(errors.len(), 3, "{err}");
    assert_eq!(
        errors[0],
        "events.jsonl:2: skipped: expected a JSON object, found an array"
    );
    assert!(
        errors[1].starts_with("events.jsonl:6: skipped: not valid JSON: "),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].starts_with("events.jsonl:7: skipped: not valid UTF-8"),
        "{}",
        errors[2]
    );
}

#[test]
fn stream_output_matches_normalize_in_order() {
    let dir = vectors_dir();
    let mut raws = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("sample folder {} missing: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for path in names {
        let sample: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        raws.push(sample["raw"].as_str().expect("raw").to_owned());
    }
    // 500 lines cycling through the samples.
    let lines: Vec<&str> = (0..500).map(|i| raws[i % raws.len()].as_str()).collect();
    let input = lines.join("\n") + "\n";
    let (out, err, stats) = run_stream(input.as_bytes(), "-");
    assert_eq!(err, "");
    assert_eq!(
        stats,
        StreamStats {
            written: 500,
            skipped: 0
        }
    );
    let outputs: Vec<&str> = out.lines().collect();
    assert_eq!(outputs.len(), 500);
    for (raw, line) in lines.iter().zip(&outputs) {
        // Byte for byte what serializing `normalize`'s document gives.
        let doc = normalize(raw).expect("sample normalizes");
        assert_eq!(*line, serde_json::to_string(&doc).expect("serializable"));
    }
}

#[test]
fn stream_of_nothing() {
    let (out, err, stats) = run_stream(b"", "empty");
    assert_eq!(
        (out.as_str(), err.as_str(), stats),
        ("", "", StreamStats::default())
    );
    let (out, err, stats) = run_stream(b"\n\n  \r\n\t\n", "blank");
    assert_eq!(
        (out.as_str(), err.as_str(), stats),
        ("", "", StreamStats::default())
    );
}

#[test]
fn cli_exit_codes() {
    // Only inputs that write nothing to stdout, so the test output stays clean.
    let dir = tempfile::tempdir().expect("temp dir");
    let blank = dir.path().join("blank.jsonl");
    let bad = dir.path().join("bad.jsonl");
    let missing = dir.path().join("missing.jsonl");
    std::fs::write(&blank, "\n\n").expect("write");
    std::fs::write(&bad, "not json\n[]\n").expect("write");

    assert_eq!(run_cli(std::slice::from_ref(&blank)), ExitCode::SUCCESS);
    assert_eq!(run_cli(&[blank.clone(), bad.clone()]), ExitCode::from(1));
    assert_eq!(
        run_cli(&[missing.clone(), blank.clone()]),
        ExitCode::from(2)
    );
    assert_eq!(run_cli(&[bad, missing]), ExitCode::from(2));
}

#[test]
fn stream_lines_equal_serialized_normalize_for_odd_events() {
    let events = [
        json!({}),
        json!({"association": {"z": 1, "a": {"y": null, "b": [3, null]}}, "changes": [{"field": "state", "from": "A", "to": null}]}),
        json!({"event_type": "sso_auth", "sso_token_success": false, "error_message": "é", "application": {"name": "x"},
               "client_ip": "2001:db8::2", "username": "u", "initiated_by": {"username": "v", "email": "e", "id": "i"},
               "resource": {"username": "r", "email": "re", "id": "ri"}, "system": {"id": "s", "hostname": "h"},
               "process_name": "p", "event": {"service": "m"}, "timestamp": "2024-02-29T23:59:59.1+00:00",
               "useragent": {"device": "d", "name": "n", "version": "v", "os_name": "o", "os_version": "ov", "os_full": "of"}}),
        json!({"client_ip": "bogus", "id": 7}),
    ];
    let input = events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let (out, err, _) = run_stream(input.as_bytes(), "odd");
    assert_eq!(err, "");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), events.len());
    for (event, line) in events.iter().zip(lines) {
        let doc = normalize(&event.to_string()).expect("valid");
        assert_eq!(
            line,
            serde_json::to_string(&doc).expect("serializable"),
            "event {event}"
        );
    }
}
