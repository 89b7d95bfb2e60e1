//! Reading a raw event: the borrowed structs that keep only the members the
//! format reads, and their lenient `Deserialize` implementations.
//!
//! Invariants: members the format does not read are skipped with
//! `IgnoredAny`, never built; a member of an unexpected JSON type reads as
//! absent (its default) instead of failing the event; the only errors are
//! text that is not JSON and JSON that is not an object. Strings are
//! borrowed from the input unless they contain escapes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::NormalizeError;

pub(super) fn parse_event(raw: &str) -> Result<Event<'_>, NormalizeError> {
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
pub(super) struct Text<'a>(Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    /// The value, unless absent or empty (empty strings never produce a field).
    pub(super) fn get(&self) -> Option<&str> {
        self.0.as_deref().filter(|s| !s.is_empty())
    }
}

/// A JSON boolean; any other type counts as absent, like the format's
/// `== true` / `== false` tests on a non-boolean.
#[derive(Default)]
pub(super) struct Flag(pub(super) Option<bool>);

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
        pub(super) struct $name<'a> {
            $(pub(super) $member: $ty,)*
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
    from: Raw<'a> = "from",
    to: Raw<'a> = "to",
});

/// A member's JSON text, unparsed; `None` only when the member is absent
/// (a JSON `null` is `Some("null")`, which the format renders as `None`).
#[derive(Default, Clone, Copy)]
pub(super) struct Raw<'a>(pub(super) Option<&'a RawValue>);

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not through `Option`, which would read `null` as absent.
        <&RawValue>::deserialize(d).map(|raw| Raw(Some(raw)))
    }
}

/// `changes`: an array of change objects; anything else counts as absent.
#[derive(Default)]
pub(super) struct Changes<'a>(pub(super) Vec<Change<'a>>);

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
