//! Building the ECS document from a parsed event: the mapping rules of
//! `docs/normalize.md` and the borrowed document structs.
//!
//! Invariants: the document borrows from the raw text and the parsed event
//! and allocates only what it must rewrite (timestamp, change values);
//! members are declared in alphabetical order at every level, so writing
//! the structs and serializing them through a `Value` give the same bytes;
//! an empty member (absent value, empty string, empty object or array) is
//! never written.

use std::marker::PhantomData;
use std::net::IpAddr;

use serde_json::value::RawValue;
use serde_json::Value;

use super::parse::{parse_event, Change, Event, Party};
use super::python_str::python_str;
use super::NormalizeError;

/// Changes whose `from`/`to` values the format keeps, rendered by its
/// template as `{{change.from | string() | lower()}}`; for any other field
/// the template writes only the name.
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
        pub(super) struct $name<'a> {
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
pub(super) fn prepare(raw: &str) -> Result<Event<'_>, NormalizeError> {
    let mut event = parse_event(raw)?;
    event.association = event
        .association
        .take()
        .and_then(strip_empty)
        .filter(|a| !matches!(a, Value::Object(m) if m.is_empty()));
    Ok(event)
}

pub(super) fn build<'a>(raw: &'a str, ev: &'a Event<'a>) -> Doc<'a> {
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
        from: change.from.0.filter(|_| with_values).and_then(change_value),
        to: change.to.0.filter(|_| with_values).and_then(change_value),
        ..Default::default()
    })
}

/// A change value as the format's template renders it: Python's `str()` of
/// the decoded value, lower-cased (`null` → "none", `false` → "false",
/// `"ACTIVATED"` → "activated", `1e20` → "1e+20", `["A", null]` →
/// "['a', none]"; see `python_str`). An empty rendering gives nothing.
fn change_value(raw: &RawValue) -> Option<String> {
    // `None` only for a value nested too deep to render: that value is
    // dropped, the rest of the event kept.
    let text = python_str(raw.get())?;
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
