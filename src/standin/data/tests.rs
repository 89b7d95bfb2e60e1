//! The event factory's tests: valid JSON, ids and timestamps of each service's real form, Go escapes,
//! realistic sizes, deterministic seeds.

use super::*;
use serde_json::Value;
use std::collections::HashSet;

const START: i64 = 1_686_838_870_343_344_450; // 2023-06-15T14:21:10.34334445Z

fn parse(raw: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(object)) => object,
        other => panic!("not a JSON object ({other:?}): {raw}"),
    }
}

#[test]
fn every_event_is_valid_json_with_its_timestamp_and_service() {
    let mut factory = EventFactory::new(42);
    for service in SERVICES.iter().copied().chain(["password_manager"]) {
        for i in 0..100 {
            let event = factory.event(service, START + i * 7_654_321);
            let object = parse(&event.raw);
            assert_eq!(object["service"], service);
            assert!(object["event_type"].is_string());
            assert!(object["organization"].is_string());
            assert!(object["initiated_by"].is_object());
            assert!(object["client_ip"].is_string());
            let again = ApiEvent::from_raw(event.raw.clone()).unwrap();
            assert_eq!(again.timestamp_ns, event.timestamp_ns, "{}", event.raw);
            assert_eq!(again.service, service);
            // Go writes these three escaped: they never appear bare.
            assert!(!event.raw.contains(['<', '>', '&']), "{}", event.raw);
        }
    }
}

#[test]
fn ids_have_each_services_form_and_are_unique() {
    let mut factory = EventFactory::new(1);
    let mut seen = HashSet::new();
    let is_hex = |text: &str| text.chars().all(|c| c.is_ascii_hexdigit());
    for event in factory.mix(2000, START, START + 60_000_000_000) {
        let object = parse(&event.raw);
        match event.service.as_str() {
            "ldap" => {
                assert!(!object.contains_key("id"));
                assert!(object["connection_id"].is_string());
                assert!(object["operation_number"].is_u64());
                continue;
            }
            "directory" | "sso" => {
                let id = object["id"].as_str().unwrap();
                assert!(
                    id.len() == 24 && is_hex(id) && id == id.to_lowercase(),
                    "{id}"
                );
            }
            "radius" => {
                let id = object["id"].as_str().unwrap();
                assert!(id.len() == 36 && id == id.to_uppercase(), "{id}");
            }
            "systems" | "mdm" => {
                let id = object["id"].as_str().unwrap();
                assert!(id.len() == 36 && id == id.to_lowercase(), "{id}");
            }
            other => panic!("unexpected service {other}"),
        }
        assert!(
            seen.insert(object["id"].as_str().unwrap().to_string()),
            "duplicate id"
        );
    }
}

#[test]
fn timestamps_keep_each_services_precision() {
    let mut factory = EventFactory::new(3);
    let text = |raw: &str| parse(raw)["timestamp"].as_str().unwrap().to_string();
    assert_eq!(
        text(&factory.event("radius", START).raw),
        "2023-06-15T14:21:10Z"
    );
    assert_eq!(
        text(&factory.event("directory", START).raw),
        "2023-06-15T14:21:10.343Z"
    );
    assert_eq!(
        text(&factory.event("systems", START).raw),
        "2023-06-15T14:21:10.343Z"
    );
    assert_eq!(
        text(&factory.event("sso", START).raw),
        "2023-06-15T14:21:10.34334445Z"
    );
    assert_eq!(
        text(&factory.event("mdm", START + 50).raw),
        "2023-06-15T14:21:10.3433445Z"
    );
    assert_eq!(
        format_timestamp(1_686_838_870_000_000_000),
        "2023-06-15T14:21:10Z"
    );
    assert_eq!(
        format_timestamp(1_686_838_870_300_000_000),
        "2023-06-15T14:21:10.3Z"
    );
    assert_eq!(
        factory.event("radius", START).timestamp_ns,
        1_686_838_870_000_000_000
    );
}

#[test]
fn go_escapes_and_utf8_survive_literally() {
    let mut factory = EventFactory::new(8);
    let raws: Vec<String> = factory
        .mix(2000, START, START + 3_600_000_000_000)
        .into_iter()
        .map(|event| event.raw)
        .collect();
    for escape in ["\\u003c", "\\u003e", "\\u0026"] {
        let with = raws.iter().filter(|raw| raw.contains(escape)).count();
        assert!(with > 200, "{escape} in only {with} events");
    }
    assert!(raws
        .iter()
        .any(|raw| raw.contains("José") || raw.contains("Müller")));
    assert!(raws.iter().any(|raw| raw.contains("Zoë")));
    // Parsing decodes the escapes: the raw text holds them literally, the value the characters.
    let sample = raws.iter().find(|raw| raw.contains("\\u0026")).unwrap();
    let decoded = serde_json::to_string(&parse(sample)).unwrap();
    assert!(decoded.contains('&') && !decoded.contains("\\u0026"));
}

#[test]
fn sizes_look_real() {
    let mut factory = EventFactory::new(5);
    let events = factory.mix(2000, START, START + 3_600_000_000_000);
    let sizes: Vec<usize> = events.iter().map(|event| event.raw.len()).collect();
    let average = sizes.iter().sum::<usize>() / sizes.len();
    let smallest = sizes.iter().min().copied().unwrap_or_default();
    let largest = sizes.iter().max().copied().unwrap_or_default();
    assert!((700..=1500).contains(&average), "average {average}");
    assert!(smallest >= 400 && largest <= 3000, "{smallest}..{largest}");
}

#[test]
fn mix_spreads_over_the_range_in_order_with_every_service() {
    let mut factory = EventFactory::new(9);
    let from = START + 123;
    let to = from + 10_000_000_000;
    let events = factory.mix(1000, from, to);
    assert_eq!(events.len(), 1000);
    assert!(events
        .iter()
        .all(|event| (from..to).contains(&event.timestamp_ns)));
    let services: HashSet<&str> = events.iter().map(|event| event.service.as_str()).collect();
    assert_eq!(services.len(), SERVICES.len());
    assert!(factory.mix(0, from, to).is_empty());
}

#[test]
fn same_seed_same_events() {
    let a = EventFactory::new(77).mix(50, START, START + 1_000_000_000);
    let b = EventFactory::new(77).mix(50, START, START + 1_000_000_000);
    let c = EventFactory::new(78).mix(50, START, START + 1_000_000_000);
    let raws = |events: &[ApiEvent]| {
        events
            .iter()
            .map(|event| event.raw.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(raws(&a), raws(&b));
    assert_ne!(raws(&a), raws(&c));
}

#[test]
fn uuids_have_the_version_4_layout() {
    let mut rng = fastrand::Rng::with_seed(1);
    let id = crate::standin::uuid_text(&mut rng);
    assert_eq!(id.len(), 36);
    let parts: Vec<&str> = id.split('-').collect();
    assert_eq!(
        parts.iter().map(|part| part.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );
    assert!(parts[2].starts_with('4'));
    assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
}

#[test]
fn big_event_has_the_asked_size_and_stays_valid() {
    let mut factory = EventFactory::new(4);
    for bytes in [100, 5_000, 250 * 1024, 250 * 1024 + 1, 300_000] {
        let event = factory.big_event(START, bytes);
        let object = parse(&event.raw);
        assert_eq!(object["service"], "mdm");
        assert_eq!(object["event_type"], "mdm_command_result");
        if bytes >= 1000 {
            assert_eq!(event.raw.len(), bytes);
        }
        assert_eq!(ApiEvent::from_raw(event.raw).unwrap().timestamp_ns, START);
    }
}
