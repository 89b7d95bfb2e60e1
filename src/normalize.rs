//! ECS normalization of JumpCloud Directory Insights events, reproducing the
//! Sekoia.io "Jumpcloud Directory Insights" intake format, and the
//! `jcdi-forwarder normalize [FILE...]` subcommand built on it.
//!
//! This module owns the mapping rules (see `docs/normalize.md`), the
//! line-oriented stream driver and the subcommand's exit codes. It does not
//! own the command-line parser: the main CLI calls [`run_cli`].
//!
//! The raw event is parsed once, into borrowed structs that only keep the
//! fields the format reads; everything else is skipped without being built.
//! Every field reader is lenient: a field of an unexpected JSON type is
//! treated as absent instead of failing the whole event, because Sekoia's
//! template-based parser behaves that way and one odd field should not cost
//! the user the event.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// Why a raw event could not be normalized.
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    /// The text is not JSON at all (syntax error, truncation, trailing data,
    /// nesting deeper than serde_json's recursion limit).
    #[error("not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// The text is valid JSON but not an object, e.g. an array or a number.
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
}

/// Turns one raw Directory Insights event (JSON text) into the normalized ECS document.
///
/// The document's `message` is `raw` itself, unchanged.
pub fn normalize(raw: &str) -> Result<Value, NormalizeError> {
    let event = prepare(raw)?;
    // Serializing these structs into a `Value` cannot fail: every map key
    // is a string and every number finite.
    Ok(serde_json::to_value(build(raw, &event)).expect("document structs always serialize"))
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

fn parse_event(raw: &str) -> Result<Event<'_>, NormalizeError> {
    let first = raw
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(b'{') {
        return serde_json::from_str::<Event>(raw).map_err(NormalizeError::InvalidJson);
    }
    // Not an object: still tell "broken JSON" apart from "valid JSON of the
    // wrong kind", since the fix on the user's side differs.
    match serde_json::from_str::<IgnoredAny>(raw) {
        Err(e) => Err(NormalizeError::InvalidJson(e)),
        Ok(_) => Err(NormalizeError::NotAnObject(match first {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        })),
    }
}

/// A keyword value as the format's templates render it: strings as they are,
/// numbers as their text. Booleans, nulls, objects and arrays give nothing,
/// as an empty rendering would.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    /// The value, unless absent or empty (empty strings never produce a field).
    fn get(&self) -> Option<&str> {
        self.0.as_deref().filter(|s| !s.is_empty())
    }
}

/// A JSON boolean; any other type counts as absent, like the format's
/// `== true` / `== false` tests on a non-boolean.
#[derive(Default)]
struct Flag(Option<bool>);

/// An object of which only some members matter. `field` consumes the value
/// of one member; unknown members must be skipped with `IgnoredAny`.
trait Fields<'de>: Default {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// Object key, borrowed from the input unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Skips every element of an array; used when an array shows up where
/// something else was expected.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the visitor methods for JSON scalars that a lenient reader
/// turns into its default ("absent") value.
macro_rules! absent_scalars {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method<E>(self, _v: $ty) -> Result<Self::Value, E> {
            Ok(Default::default())
        })*
    };
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Fields<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut value = T::default();
        while let Some(key) = map.next_key::<Key>()? {
            value.field(&key.0, &mut map)?;
        }
        Ok(value)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        drain_seq(seq)?;
        Ok(T::default())
    }
    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::default())
    }
    absent_scalars!(
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_f64(f64),
        visit_str(&str)
    );
}

/// Declares a struct of `Text`-like members read from an object by key, with
/// a lenient `Deserialize` (non-objects give the default).
macro_rules! lenient_object {
    ($name:ident { $($member:ident : $ty:ty = $key:literal),* $(,)? }) => {
        #[derive(Default)]
        struct $name<'a> {
            $($member: $ty,)*
            _borrow: PhantomData<&'a str>,
        }
        impl<'de> Fields<'de> for $name<'de> {
            fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
                match key {
                    $($key => self.$member = map.next_value()?,)*
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(())
            }
        }
        impl<'de> Deserialize<'de> for $name<'de> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ObjectVisitor::<Self>(PhantomData))
            }
        }
    };
}

lenient_object!(Event {
    event_type: Text<'a> = "event_type",
    id: Text<'a> = "id",
    timestamp: Text<'a> = "timestamp",
    client_ip: Text<'a> = "client_ip",
    username: Text<'a> = "username",
    process_name: Text<'a> = "process_name",
    error_message: Text<'a> = "error_message",
    success: Flag = "success",
    sso_token_success: Flag = "sso_token_success",
    initiated_by: Party<'a> = "initiated_by",
    resource: Party<'a> = "resource",
    system: System<'a> = "system",
    useragent: UserAgent<'a> = "useragent",
    application: Application<'a> = "application",
    event: EventInfo<'a> = "event",
    changes: Changes<'a> = "changes",
    association: Option<Value> = "association",
});

lenient_object!(Party {
    username: Text<'a> = "username",
    email: Text<'a> = "email",
    id: Text<'a> = "id",
});

lenient_object!(System {
    id: Text<'a> = "id",
    hostname: Text<'a> = "hostname",
});

lenient_object!(UserAgent {
    device: Text<'a> = "device",
    name: Text<'a> = "name",
    version: Text<'a> = "version",
    os_name: Text<'a> = "os_name",
    os_version: Text<'a> = "os_version",
    os_full: Text<'a> = "os_full",
});

lenient_object!(Application {
    name: Text<'a> = "name",
});

lenient_object!(EventInfo {
    service: Text<'a> = "service",
});

// `from`/`to` stay raw: most changes (addresses, attributes, ...) carry big
// values that the format ignores, and the field name that decides whether
// they matter may come after them in the object.
lenient_object!(Change {
    field: Text<'a> = "field",
    from: Option<&'a RawValue> = "from",
    to: Option<&'a RawValue> = "to",
});

/// `changes`: an array of change objects; anything else counts as absent.
#[derive(Default)]
struct Changes<'a>(Vec<Change<'a>>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Text(
                    serde_json::Number::from_f64(v).map(|n| Cow::Owned(n.to_string())),
                ))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map)?;
                Ok(Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq)?;
                Ok(Text(None))
            }
            absent_scalars!(visit_bool(bool));
        }
        d.deserialize_any(TextVisitor)
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FlagVisitor;
        impl<'de> Visitor<'de> for FlagVisitor {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(Some(v)))
            }
            fn visit_unit<E>(self) -> Result<Flag, E> {
                Ok(Flag(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Flag, A::Error> {
                drain_map(map)?;
                Ok(Flag(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Flag, A::Error> {
                drain_seq(seq)?;
                Ok(Flag(None))
            }
            absent_scalars!(
                visit_i64(i64),
                visit_u64(u64),
                visit_f64(f64),
                visit_str(&str)
            );
        }
        d.deserialize_any(FlagVisitor)
    }
}

impl<'de> Deserialize<'de> for Changes<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ChangesVisitor;
        impl<'de> Visitor<'de> for ChangesVisitor {
            type Value = Changes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut changes = Vec::new();
                while let Some(change) = seq.next_element::<Change>()? {
                    changes.push(change);
                }
                Ok(Changes(changes))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map)?;
                Ok(Changes::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Changes::default())
            }
            absent_scalars!(
                visit_bool(bool),
                visit_i64(i64),
                visit_u64(u64),
                visit_f64(f64),
                visit_str(&str)
            );
        }
        d.deserialize_any(ChangesVisitor)
    }
}

// ---------------------------------------------------------------------------
// Building the document
// ---------------------------------------------------------------------------

/// Changes whose `from`/`to` values the format keeps (lower-cased text);
/// for any other field only the name is kept.
const FIELDS_WITH_VALUES: [&str; 8] = [
    "activated",
    "password_date",
    "state",
    "suspended",
    "enable_user_portal_multifactor",
    "mfa.exclusion",
    "mfa.exclusionUntil",
    "totp_enabled",
];

fn category_of(event_type: &str) -> Option<&'static str> {
    match event_type {
        "user_password_warning_email"
        | "user_password_reset_request"
        | "user_activation_email"
        | "user_unlocked" => Some("iam"),
        "ldap_bind"
        | "user_login_attempt"
        | "sso_auth"
        | "admin_login_attempt"
        | "login_attempt" => Some("authentication"),
        _ => None,
    }
}

// The document is first built as borrowed structs that serialize directly:
// the stream writes them without ever building a `serde_json::Value` tree
// (which costs dozens of small allocations per event), and `normalize` turns
// them into a `Value`. Members are declared in alphabetical order at every
// level, which is the order `Value` (a sorted map) serializes in, so both
// paths give byte-identical lines. (Were serde_json's `preserve_order`
// feature ever enabled, `Value` would keep declaration order: still equal.)

/// A document member that is left out when it holds nothing.
trait Sparse {
    fn is_empty(&self) -> bool;
}

impl<T> Sparse for Option<T> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}

impl<T> Sparse for Vec<T> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

/// Declares a document object whose members are all [`Sparse`] and skipped
/// when empty; the object itself is empty when all its members are.
macro_rules! sparse_object {
    ($name:ident { $($(#[$attr:meta])* $member:ident : $ty:ty),* $(,)? }) => {
        #[derive(Default, serde::Serialize)]
        struct $name<'a> {
            $(
                $(#[$attr])*
                #[serde(skip_serializing_if = "Sparse::is_empty")]
                $member: $ty,
            )*
            #[serde(skip)]
            _borrow: PhantomData<&'a str>,
        }
        impl Sparse for $name<'_> {
            fn is_empty(&self) -> bool {
                true $(&& self.$member.is_empty())*
            }
        }
    };
}

type Str<'a> = Option<&'a str>;

sparse_object!(Doc {
    #[serde(rename = "@timestamp")]
    timestamp: Option<String>,
    action: ActionDoc<'a>,
    client: Address<'a>,
    event: EventDoc<'a>,
    host: HostDoc<'a>,
    jumpcloud: JumpcloudDoc<'a>,
    message: Str<'a>,
    observer: ObserverDoc<'a>,
    process: Named<'a>,
    related: RelatedDoc<'a>,
    service: Named<'a>,
    source: SourceDoc<'a>,
    user: UserDoc<'a>,
    user_agent: UserAgentDoc<'a>,
});

sparse_object!(ActionDoc {
    outcome: Str<'a>,
    outcome_reason: Str<'a>,
});

sparse_object!(Address {
    address: Str<'a>,
    ip: Str<'a>,
});

sparse_object!(EventDoc {
    action: Str<'a>,
    category: Option<[&'a str; 1]>,
    module: Str<'a>,
    #[serde(rename = "type")]
    kind: Option<[&'a str; 1]>,
});

sparse_object!(HostDoc {
    id: Str<'a>,
    name: Str<'a>,
});

sparse_object!(JumpcloudDoc {
    association: Option<&'a Value>,
    changes: Vec<ChangeDoc<'a>>,
    event_type: Str<'a>,
    id: Str<'a>,
});

sparse_object!(ChangeDoc {
    field: Str<'a>,
    from: Option<String>,
    to: Option<String>,
});

sparse_object!(ObserverDoc {
    vendor: Str<'a>,
});

sparse_object!(Named {
    name: Str<'a>,
});

sparse_object!(RelatedDoc {
    ip: Option<[&'a str; 1]>,
    user: Vec<&'a str>,
});

sparse_object!(SourceDoc {
    address: Str<'a>,
    ip: Str<'a>,
    user: UserRef<'a>,
});

sparse_object!(UserRef {
    email: Str<'a>,
    id: Str<'a>,
    name: Str<'a>,
});

sparse_object!(UserDoc {
    name: Str<'a>,
    target: UserRef<'a>,
});

sparse_object!(UserAgentDoc {
    device: Named<'a>,
    name: Str<'a>,
    os: OsDoc<'a>,
    version: Str<'a>,
});

sparse_object!(OsDoc {
    full: Str<'a>,
    name: Str<'a>,
    version: Str<'a>,
});

fn user_ref<'a>(party: &'a Party) -> UserRef<'a> {
    UserRef {
        email: party.email.get(),
        id: party.id.get(),
        name: party.username.get(),
        ..Default::default()
    }
}

/// Parses `raw` and prepares what the document borrows from: the event with
/// its association already stripped of empty members.
fn prepare(raw: &str) -> Result<Event<'_>, NormalizeError> {
    let mut event = parse_event(raw)?;
    event.association = event
        .association
        .take()
        .and_then(strip_empty)
        .filter(|a| !matches!(a, Value::Object(m) if m.is_empty()));
    Ok(event)
}

fn build<'a>(raw: &'a str, ev: &'a Event<'a>) -> Doc<'a> {
    let event_type = ev.event_type.get();
    let is_sso = event_type == Some("sso_auth");
    let category = event_type.and_then(category_of);

    // client.* takes client_ip as it is; source.* and related.ip only a
    // valid address, as the format's `is_ipaddress` filter does.
    let client_ip = ev.client_ip.get();
    let valid_ip = client_ip.filter(|ip| ip.parse::<IpAddr>().is_ok());

    // related.user holds user.name and source.user.name only: the samples
    // leave user.target.name and the e-mail addresses out of it.
    let mut users: Vec<&str> = [ev.username.get(), ev.initiated_by.username.get()]
        .into_iter()
        .flatten()
        .collect();
    users.sort_unstable();
    users.dedup();

    // The format runs the `success` rule first, then for sso_auth the
    // `sso_token_success` rule, each overwriting what it sets. A reason set
    // by the first rule survives a later "success": kept as Sekoia does.
    let mut outcome = None;
    let mut reason = None;
    let mut apply = |flag: Option<bool>| match flag {
        Some(true) => outcome = Some("success"),
        Some(false) => {
            outcome = Some("failure");
            reason = ev.error_message.get();
        }
        None => {}
    };
    apply(ev.success.0);
    if is_sso {
        apply(ev.sso_token_success.0);
    }

    let ua = &ev.useragent;
    Doc {
        timestamp: ev.timestamp.get().and_then(format_timestamp),
        action: ActionDoc {
            outcome,
            outcome_reason: reason,
            ..Default::default()
        },
        client: Address {
            address: client_ip,
            ip: client_ip,
            ..Default::default()
        },
        event: EventDoc {
            action: event_type,
            category: category.map(|c| [c]),
            module: ev.event.service.get(),
            kind: category.map(|_| ["info"]),
            ..Default::default()
        },
        host: HostDoc {
            id: ev.system.id.get(),
            name: ev.system.hostname.get(),
            ..Default::default()
        },
        jumpcloud: JumpcloudDoc {
            association: ev.association.as_ref(),
            changes: ev.changes.0.iter().filter_map(change_doc).collect(),
            event_type,
            id: ev.id.get(),
            ..Default::default()
        },
        message: Some(raw),
        observer: ObserverDoc {
            vendor: Some("Jumpcloud"),
            ..Default::default()
        },
        process: Named {
            name: ev.process_name.get(),
            ..Default::default()
        },
        related: RelatedDoc {
            ip: valid_ip.map(|ip| [ip]),
            user: users,
            ..Default::default()
        },
        service: Named {
            name: ev.application.name.get().filter(|_| is_sso),
            ..Default::default()
        },
        source: SourceDoc {
            address: valid_ip,
            ip: valid_ip,
            user: user_ref(&ev.initiated_by),
            ..Default::default()
        },
        user: UserDoc {
            name: ev.username.get(),
            target: user_ref(&ev.resource),
            ..Default::default()
        },
        user_agent: UserAgentDoc {
            device: Named {
                name: ua.device.get(),
                ..Default::default()
            },
            name: ua.name.get(),
            os: OsDoc {
                full: ua.os_full.get(),
                name: ua.os_name.get(),
                version: ua.os_version.get(),
                ..Default::default()
            },
            version: ua.version.get(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// One `jumpcloud.changes` entry; `None` when the change names no field.
fn change_doc<'a>(change: &'a Change) -> Option<ChangeDoc<'a>> {
    let field = change.field.get()?;
    let with_values = FIELDS_WITH_VALUES.contains(&field);
    Some(ChangeDoc {
        field: Some(field),
        from: change.from.filter(|_| with_values).and_then(change_value),
        to: change.to.filter(|_| with_values).and_then(change_value),
        ..Default::default()
    })
}

/// The lower-cased text of a change value: `false` → "false",
/// `"ACTIVATED"` → "activated", `3` → "3". Null and "" give nothing.
/// Objects and arrays become their compact JSON text, lower-cased.
fn change_value(raw: &RawValue) -> Option<String> {
    // The raw text came out of a successful parse, so this cannot fail in
    // practice; a failure just drops the value.
    let value: Value = serde_json::from_str(raw.get()).ok()?;
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s,
        other => other.to_string(),
    };
    if text.is_empty() {
        None
    } else {
        Some(text.to_lowercase())
    }
}

/// Removes null and "" members (and array elements) at every depth: the
/// format never keeps empty values.
fn strip_empty(value: Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Object(map) => Some(Value::Object(
            map.into_iter()
                .filter_map(|(k, v)| strip_empty(v).map(|v| (k, v)))
                .collect(),
        )),
        Value::Array(items) => Some(Value::Array(
            items.into_iter().filter_map(strip_empty).collect(),
        )),
        other => Some(other),
    }
}

/// `@timestamp` in UTC: `YYYY-MM-DDTHH:MM:SSZ` when the source has no
/// fraction of a second, else with exactly six digits (truncated, not
/// rounded: `.812449824` → `.812449`, `.921` → `.921000`). A value that is
/// not a date gives no `@timestamp` rather than an unparseable one.
fn format_timestamp(text: &str) -> Option<String> {
    use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
    use std::fmt::Write as _;

    let utc: DateTime<Utc> = match DateTime::parse_from_rfc3339(text) {
        Ok(dt) => dt.with_timezone(&Utc),
        // No offset at all: read as UTC, which is what the API sends.
        Err(_) => NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()?
            .and_utc(),
    };
    // Fractions only appear after the seconds; a date has no '.' elsewhere.
    let has_fraction = text.contains('.');
    let nanos = utc.nanosecond();
    // chrono keeps a leap second as nanos >= 1e9 on second 59.
    let (second, nanos) = if nanos >= 1_000_000_000 {
        (60, nanos - 1_000_000_000)
    } else {
        (utc.second(), nanos)
    };
    let mut out = String::with_capacity(27);
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        utc.year(),
        utc.month(),
        utc.day(),
        utc.hour(),
        utc.minute(),
        second
    )
    .ok()?;
    if has_fraction {
        write!(out, ".{:06}", nanos / 1000).ok()?;
    }
    out.push('Z');
    Some(out)
}

// ---------------------------------------------------------------------------
// Stream and subcommand
// ---------------------------------------------------------------------------

/// What [`normalize_stream`] did with its input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Normalized documents written.
    pub written: u64,
    /// Non-blank lines skipped because they were not a JSON object (or not UTF-8).
    pub skipped: u64,
}

/// Normalizes one raw event per line from `input` into one JSON document per
/// line on `out`, in input order. Blank lines are ignored. A bad line is
/// reported on `err` as `SOURCE:LINE: skipped: REASON` and skipped.
///
/// `out` is not flushed: the caller owns its buffering. An `Err` is an I/O
/// failure reading `input` or writing `out`/`err`; processing stops there.
pub fn normalize_stream(
    mut input: impl BufRead,
    source: &str,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<StreamStats> {
    let mut stats = StreamStats::default();
    let mut line = Vec::with_capacity(4096);
    let mut line_no: u64 = 0;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(stats);
        }
        line_no += 1;
        let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        // Read bytes, not `String` lines: one line of invalid UTF-8 must
        // cost that line only, not abort the whole file.
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                writeln!(err, "{source}:{line_no}: skipped: not valid UTF-8: {e}")?;
                stats.skipped += 1;
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match prepare(text) {
            Ok(event) => {
                serde_json::to_writer(&mut *out, &build(text, &event))?;
                out.write_all(b"\n")?;
                stats.written += 1;
            }
            Err(e) => {
                writeln!(err, "{source}:{line_no}: skipped: {e}")?;
                stats.skipped += 1;
            }
        }
    }
}

/// The `normalize` subcommand: reads raw events, one JSON document per line, from `files` (stdin when empty),
/// writes one normalized document per line to stdout in order; a bad line gets a clear message on stderr naming
/// the file and line number and is skipped; exit code 0 when every line was good, 1 when some were skipped,
/// 2 when a file could not be opened (the others are still processed). Blank lines are ignored.
///
/// `-` among `files` also means stdin. A read error in the middle of a file
/// counts like a file that could not be opened (exit code 2). When stdout is
/// closed early (`| head`), processing stops quietly.
pub fn run_cli(files: &[PathBuf]) -> ExitCode {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let stderr = io::stderr();
    let mut err = stderr.lock();
    let mut any_skipped = false;
    let mut any_failed = false;

    let stdin_only = [PathBuf::from("-")];
    let files = if files.is_empty() {
        &stdin_only[..]
    } else {
        files
    };
    for path in files {
        let result = if path == Path::new("-") {
            normalize_stream(io::stdin().lock(), "<stdin>", &mut out, &mut err)
        } else {
            match File::open(path) {
                Ok(file) => normalize_stream(
                    BufReader::with_capacity(64 * 1024, file),
                    &path.display().to_string(),
                    &mut out,
                    &mut err,
                ),
                Err(e) => {
                    // Best effort: if stderr itself is gone there is no one to tell.
                    let _ = writeln!(err, "{}: cannot open: {e}", path.display());
                    any_failed = true;
                    continue;
                }
            }
        };
        match result {
            Ok(stats) => any_skipped |= stats.skipped > 0,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                return exit_code(any_failed, any_skipped)
            }
            Err(e) => {
                let _ = writeln!(err, "{}: stopped: {e}", path.display());
                any_failed = true;
            }
        }
    }
    if let Err(e) = out.flush() {
        if e.kind() != io::ErrorKind::BrokenPipe {
            let _ = writeln!(err, "cannot write to stdout: {e}");
            any_failed = true;
        }
    }
    exit_code(any_failed, any_skipped)
}

fn exit_code(any_failed: bool, any_skipped: bool) -> ExitCode {
    if any_failed {
        ExitCode::from(2)
    } else if any_skipped {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
