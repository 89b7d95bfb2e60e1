//! What an events or count request selects: the request body validated into a `Query`, and the walk over the
//! stored events (sorted by their sort key) that yields a page or a count.
//!
//! Invariants it keeps:
//! - what the real API refuses is refused with 400 and a message saying why; an invalid `limit` silently
//!   falls back to the default, as the real API does;
//! - the key range handed to `BTreeMap::range` is never inverted (that would panic): an empty range is
//!   decided first;
//! - an event is selected only when its service is wanted and it is visible (its `visible_at` has passed),
//!   whatever the request.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value};

use crate::standin::data::parse_time_ns;

/// The `limit` used when a request gives none or an invalid one (capped by `max_limit`).
const DEFAULT_LIMIT: usize = 1000;

/// Service names the real API accepts (besides `"all"`), from jumpcloud-api.md.
pub const VALID_SERVICES: &[&str] = &[
    "directory",
    "sso",
    "radius",
    "ldap",
    "systems",
    "mdm",
    "password_manager",
    "software",
    "alerts",
    "access_management",
    "asset_management",
    "object_storage",
    "saas_app_management",
    "notifications",
    "reports",
];

/// The sort key: (timestamp in milliseconds, doc id).
pub(super) type SortKey = (i64, String);

pub(super) struct Stored {
    pub(super) raw: Bytes,
    pub(super) service: String,
    pub(super) visible_at: Option<SystemTime>,
}

pub(super) fn now_ns(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Sort {
    Asc,
    Desc,
}

impl Sort {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Sort::Asc => "ASC",
            Sort::Desc => "DESC",
        }
    }
}

/// A validated events (or count) request.
#[derive(Debug)]
pub(super) struct Query {
    /// `None` means all services.
    pub(super) services: Option<Vec<String>>,
    pub(super) start_ms: i64,
    pub(super) end_ms: Option<i64>,
    pub(super) limit: usize,
    pub(super) sort: Sort,
    pub(super) search_after: Option<SortKey>,
}

/// Why a request is refused: status and message.
pub(super) type Refusal = (StatusCode, String);

pub(super) fn bad_request(message: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, message.into())
}

/// A request body as the JSON object every endpoint expects.
pub(super) fn parse_body(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(bad_request("invalid request body: expected a JSON object")),
        Err(error) => Err(bad_request(format!("invalid request body: {error}"))),
    }
}

/// The filters and paging of a request body (the fields `/events`, `/events/count` and `/events/interval`
/// share); other fields are left to the caller.
pub(super) fn parse_query(
    object: &Map<String, Value>,
    max_limit: usize,
    now: SystemTime,
) -> Result<Query, Refusal> {
    let services = match object.get("service") {
        None | Some(Value::Null) => return Err(bad_request("service is required")),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| bad_request("service must be an array of strings"))?;
                if name != "all" && !VALID_SERVICES.contains(&name) {
                    return Err(bad_request(format!(
                        "invalid service {name:?}; valid: all, {}",
                        VALID_SERVICES.join(", ")
                    )));
                }
                names.push(name.to_string());
            }
            names
        }
        Some(_) => return Err(bad_request("service must be a non-empty array of strings")),
    };
    let services = if services.iter().any(|name| name == "all") {
        None
    } else {
        Some(services)
    };

    let start_ns = match object.get("start_time") {
        None | Some(Value::Null) => return Err(bad_request("start_time is required")),
        Some(Value::String(text)) => parse_time_ns(text)
            .ok_or_else(|| bad_request(format!("start_time {text:?} is not an RFC 3339 time")))?,
        Some(_) => return Err(bad_request("start_time must be an RFC 3339 string")),
    };
    if start_ns > now_ns(now) {
        return Err(bad_request("start_time is in the future"));
    }

    let end_ns = match object.get("end_time") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            parse_time_ns(text)
                .ok_or_else(|| bad_request(format!("end_time {text:?} is not an RFC 3339 time")))?,
        ),
        Some(_) => return Err(bad_request("end_time must be an RFC 3339 string")),
    };
    if let Some(end_ns) = end_ns {
        if end_ns <= start_ns {
            return Err(bad_request(
                "Start Time not after End Time: end_time must be after start_time",
            ));
        }
    }

    // The real API silently replaces an invalid limit by its default: imitate, never refuse.
    let fallback = DEFAULT_LIMIT.min(max_limit).max(1);
    let limit = match object.get("limit").and_then(Value::as_u64) {
        Some(limit) if limit >= 1 && limit <= max_limit as u64 => limit as usize,
        _ => fallback,
    };

    let sort = match object.get("sort") {
        None | Some(Value::Null) => Sort::Asc,
        Some(Value::String(text)) if text.eq_ignore_ascii_case("ASC") => Sort::Asc,
        Some(Value::String(text)) if text.eq_ignore_ascii_case("DESC") => Sort::Desc,
        Some(_) => return Err(bad_request("sort must be \"ASC\" or \"DESC\"")),
    };

    let search_after = match object.get("search_after") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::Number(ms), Value::String(id)] => match ms.as_i64() {
                Some(ms) => Some((ms, id.clone())),
                None => {
                    return Err(bad_request(
                        "search_after: first element must be an integer",
                    ))
                }
            },
            _ => {
                return Err(bad_request(
                    "search_after must be copied from X-Search_after: [<ms>, \"<id>\"]",
                ))
            }
        },
        Some(_) => return Err(bad_request("search_after must be an array")),
    };

    Ok(Query {
        services,
        start_ms: start_ns.div_euclid(1_000_000),
        end_ms: end_ns.map(|ns| ns.div_euclid(1_000_000)),
        limit,
        sort,
        search_after,
    })
}

/// The bounds of the key range a query covers, or `None` when it is empty. `BTreeMap::range` panics on an
/// inverted range, so emptiness is decided here first.
fn key_range(query: &Query, paged: bool) -> Option<(Bound<SortKey>, Bound<SortKey>)> {
    // The empty string sorts before every doc id, so (ms, "") is the first key of a millisecond.
    let mut lower = Bound::Included((query.start_ms, String::new()));
    let mut upper = match query.end_ms {
        Some(end_ms) => Bound::Excluded((end_ms, String::new())),
        None => Bound::Unbounded,
    };
    if let (true, Some(after)) = (paged, &query.search_after) {
        match query.sort {
            Sort::Asc => {
                if *after >= (query.start_ms, String::new()) {
                    lower = Bound::Excluded(after.clone());
                }
            }
            Sort::Desc => {
                let tighter = match &upper {
                    Bound::Excluded(end) => after < end,
                    _ => true,
                };
                if tighter {
                    upper = Bound::Excluded(after.clone());
                }
            }
        }
    }
    let (low, low_excluded) = match &lower {
        Bound::Included(key) => (key, false),
        Bound::Excluded(key) => (key, true),
        Bound::Unbounded => return Some((lower, upper)),
    };
    let nonempty = match &upper {
        Bound::Unbounded => true,
        Bound::Excluded(high) => low < high,
        Bound::Included(high) => low < high || (low == high && !low_excluded),
    };
    nonempty.then_some((lower, upper))
}

fn matches(stored: &Stored, services: &Option<Vec<String>>, now: SystemTime) -> bool {
    let visible = match stored.visible_at {
        Some(at) => at <= now,
        None => true,
    };
    let wanted = match services {
        None => true,
        Some(names) => names.contains(&stored.service),
    };
    visible && wanted
}

/// The stored events `query` selects, in ascending sort-key order (`.rev()` for descending): inside its
/// time range, after its `search_after` when `paged`, of a wanted service, and visible at `now`. Pages,
/// counts and histograms all walk this one selection, so they can never disagree on what a query means.
pub(super) fn selected<'a>(
    events: &'a BTreeMap<SortKey, Stored>,
    query: &'a Query,
    now: SystemTime,
    paged: bool,
) -> impl DoubleEndedIterator<Item = (&'a SortKey, &'a Stored)> + 'a {
    key_range(query, paged)
        .map(|range| events.range(range))
        .into_iter()
        .flatten()
        .filter(move |(_, stored)| matches(stored, &query.services, now))
}

/// One page: the raw texts and the sort key of the last one.
pub(super) struct Page {
    pub(super) raws: Vec<Bytes>,
    pub(super) last: Option<SortKey>,
}

pub(super) fn select_page(
    events: &BTreeMap<SortKey, Stored>,
    query: &Query,
    now: SystemTime,
) -> Page {
    let mut page = Page {
        raws: Vec::with_capacity(query.limit.min(events.len())),
        last: None,
    };
    let mut push = |(key, stored): (&SortKey, &Stored)| {
        // Cloning `Bytes` only bumps a reference count: the big copy happens outside the lock.
        page.raws.push(stored.raw.clone());
        page.last = Some(key.clone());
    };
    let selection = selected(events, query, now, true);
    match query.sort {
        Sort::Asc => selection.take(query.limit).for_each(&mut push),
        Sort::Desc => selection.rev().take(query.limit).for_each(&mut push),
    }
    page
}

/// How many events a query selects, whatever its `limit` and `search_after` (as `/events/count` answers).
pub(super) fn count_events(
    events: &BTreeMap<SortKey, Stored>,
    query: &Query,
    now: SystemTime,
) -> usize {
    selected(events, query, now, false).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_range_never_inverts() {
        let query = |search_after: Option<SortKey>, sort| Query {
            services: None,
            start_ms: 100,
            end_ms: Some(200),
            limit: 10,
            sort,
            search_after,
        };
        assert!(key_range(&query(Some((300, "a".into())), Sort::Asc), true).is_none());
        assert!(key_range(&query(Some((50, "a".into())), Sort::Desc), true).is_none());
        assert!(key_range(&query(Some((150, "a".into())), Sort::Asc), true).is_some());
        // Every case must be safe to hand to BTreeMap::range.
        let map: BTreeMap<SortKey, ()> = BTreeMap::new();
        for ms in [0, 100, 150, 199, 200, 300] {
            for sort in [Sort::Asc, Sort::Desc] {
                if let Some(range) = key_range(&query(Some((ms, String::new())), sort), true) {
                    assert_eq!(map.range(range).count(), 0);
                }
            }
        }
    }
}
