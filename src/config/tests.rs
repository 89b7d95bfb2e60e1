//! Tests of the configuration through its public entry points: the documented form, defaults, inheritance
//! between sections, every problem listed at once, `${VAR}` expansion and secrets that never print.

use super::*;
use crate::event::DEFAULT_STREAM;

fn env(name: &str) -> Option<String> {
    match name {
        "JUMPCLOUD_API_KEY" => Some("jc-secret".into()),
        "SEKOIA_INTAKE_KEY" => Some("sk-secret".into()),
        _ => None,
    }
}

const ISSUE_FORM: &str = r#"
data_dir = "/var/lib/jcdi-forwarder"

[jumpcloud]
base_url = "https://api.jumpcloud.com"
api_key = "${JUMPCLOUD_API_KEY}"
org_id = "abc"
services = ["all"]
poll_interval = "60s"
page_size = 1000
initial_lookback = "24h"
overlap = "10m"

[sekoia]
intake_url = "https://intake.sekoia.io"
intake_key = "${SEKOIA_INTAKE_KEY}"
batch_max_events = 1000
batch_max_bytes = "4MiB"

[queue]
max_bytes = "10GiB"
"#;

#[test]
fn the_documented_form_parses() {
    let loaded = Config::parse(ISSUE_FORM, "c.toml", &env).expect("valid");
    let c = loaded.config;
    assert_eq!(
        c.streams[0].jumpcloud.auth,
        JumpcloudAuth::ApiKey(Secret::new("jc-secret"))
    );
    assert_eq!(c.streams.len(), 1);
    assert_eq!(c.streams[0].name, DEFAULT_STREAM);
    assert_eq!(c.streams[0].jumpcloud.org_id.as_deref(), Some("abc"));
    assert_eq!(c.streams[0].jumpcloud.overlap, Duration::from_secs(600));
    assert_eq!(c.streams[0].sekoia.batch_max_bytes, 4 * 1024 * 1024);
    assert_eq!(c.queue.max_bytes, 10 * 1024 * 1024 * 1024);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn only_the_keys_are_required() {
    let text = "[jumpcloud]\napi_key = \"a\"\n[sekoia]\nintake_key = \"b\"\n";
    let c = Config::parse(text, "c.toml", &env).expect("valid").config;
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(c.streams[0].jumpcloud.services, vec!["all".to_string()]);
    assert_eq!(c.streams[0].jumpcloud.page_size, 1000);
    assert_eq!(c.streams[0].jumpcloud.catch_up_page_size, 10_000);
    assert_eq!(c.streams[0].jumpcloud.request_ceiling(), 10.0);
    assert_eq!(c.streams[0].sekoia.max_in_flight, 2);
    assert_eq!(c.streams[0].sekoia.intake_url, "https://intake.sekoia.io");
}

#[test]
fn catch_up_pages_and_batches_in_flight_per_stream_and_destination() {
    let text = r#"
[jumpcloud]
catch_up_page_size = 3000
[sekoia]
intake_key = "k"
max_in_flight = 4
[sekoia.other]
intake_key = "o"
max_in_flight = 1
[[streams]]
name = "a"
api_key = "a"
[[streams]]
name = "b"
api_key = "b"
catch_up_page_size = 500
destination = "other"
"#;
    let c = Config::parse(text, "c.toml", &env).expect("valid").config;
    let (a, b) = (&c.streams[0], &c.streams[1]);
    assert_eq!(
        a.jumpcloud.catch_up_page_size, 3000,
        "inherited from [jumpcloud]"
    );
    assert_eq!(b.jumpcloud.catch_up_page_size, 500);
    assert_eq!(a.sekoia.max_in_flight, 4);
    assert_eq!(b.sekoia.max_in_flight, 1);
    let bad = "[jumpcloud]\napi_key = \"a\"\n[sekoia]\nintake_key = \"b\"\n[sekoia.x]\nmax_in_flight = 0\n\
               [[streams]]\nname = \"s\"\napi_key = \"c\"\ncatch_up_page_size = 10001\ndestination = \"x\"\n";
    let all = Config::parse(bad, "c.toml", &env)
        .expect_err("invalid")
        .to_string();
    assert!(
        all.contains("sekoia.x.max_in_flight = 0 is out of range: use 1 to 16"),
        "{all}"
    );
    assert!(
        all.contains("streams.s.catch_up_page_size = 10001 is out of range: use 1 to 10000"),
        "{all}"
    );
}

#[test]
fn small_test_values_are_accepted_with_warnings() {
    let text = "[jumpcloud]\napi_key = \"a\"\npoll_interval = \"1s\"\noverlap = \"0s\"\n[sekoia]\nintake_key = \"b\"\n";
    let loaded = Config::parse(text, "c.toml", &env).expect("valid");
    assert_eq!(
        loaded.config.streams[0].jumpcloud.poll_interval,
        Duration::from_secs(1)
    );
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
}

#[test]
fn every_problem_is_listed_with_its_key() {
    let text = r#"
data_dr = "/tmp/x"
[jumpcloud]
api_key = "${NOPE}"
page_size = 20000
catch_up_page_size = 0
poll_interval = "soon"
services = []
[sekoia]
intake_url = "ftp://x"
max_in_flight = 17
[queue]
max_bytes = "lots"
"#;
    let err = Config::parse(text, "c.toml", &env).expect_err("invalid");
    let all = err.to_string();
    for needle in [
        "data_dr is not a known key (did you mean \"data_dir\"?)",
        "jumpcloud.api_key uses ${NOPE}, but the environment variable NOPE is not set",
        "jumpcloud.page_size = 20000 is out of range",
        "jumpcloud.catch_up_page_size = 0 is out of range",
        "sekoia.max_in_flight = 17 is out of range",
        "jumpcloud.poll_interval = \"soon\" is not a duration",
        "jumpcloud.services is empty",
        "sekoia.intake_url = \"ftp://x\" is not an http(s) URL",
        "sekoia.intake_key is missing",
        "queue.max_bytes = \"lots\" is not a size",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(err.problems.len(), 10, "{all}");
}

#[test]
fn env_expansion() {
    let e = |n: &str| (n == "A").then(|| "1".to_string());
    assert_eq!(expand_env("x${A}y", &e).unwrap(), "x1y");
    assert_eq!(expand_env("${B:-two}", &e).unwrap(), "two");
    assert_eq!(expand_env("$$5 $x", &e).unwrap(), "$5 $x");
    assert!(expand_env("${B}", &e).is_err());
    assert!(expand_env("${A", &e).is_err());
}

#[test]
fn secrets_do_not_print() {
    let s = Secret::new("hunter2");
    assert!(!format!("{s:?} {s}").contains("hunter2"));
}

#[test]
fn a_backfill_names_its_stream_when_there_are_several() {
    let text = r#"
[jumpcloud]
api_key = "k"
[sekoia]
intake_key = "i"
[[streams]]
name = "acme"
org_id = "a1"
intake_key = "ia"
[[streams]]
name = "globex"
org_id = "g1"
intake_key = "ig"
"#;
    let config = Config::parse(text, "t", &|_| None).expect("valid").config;
    let err = config.pick_stream(None).unwrap_err();
    assert!(err.contains("--stream (acme, globex)"), "{err}");
    assert_eq!(config.pick_stream(Some("globex")).unwrap().name, "globex");
    assert!(config
        .pick_stream(Some("initech"))
        .unwrap_err()
        .contains("no stream is named"));
    assert_eq!(config.stream("acme").map(|s| s.name.as_str()), Some("acme"));
    assert!(config.stream("initech").is_none());
}

#[test]
fn the_request_ceiling_takes_the_slower_of_the_old_and_the_new_setting() {
    let parse = |extra: &str| {
        let text = format!("[jumpcloud]\napi_key = \"a\"\n{extra}\n[sekoia]\nintake_key = \"b\"\n");
        Config::parse(&text, "c.toml", &env)
    };
    let old = parse("min_request_interval = \"500ms\"").expect("a config that worked still works");
    assert_eq!(old.config.streams[0].jumpcloud.request_ceiling(), 2.0);
    let new = parse("max_requests_per_second = 4").expect("valid");
    assert_eq!(new.config.streams[0].jumpcloud.request_ceiling(), 4.0);
    let both =
        parse("max_requests_per_second = 4\nmin_request_interval = \"100ms\"").expect("valid");
    assert_eq!(both.config.streams[0].jumpcloud.request_ceiling(), 4.0);
    let err = parse("max_requests_per_second = 0")
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("jumpcloud.max_requests_per_second = 0 is out of range: use 1 to 100"),
        "{err}"
    );
}
