//! Faults the API stand-in can inject, each replacing or spoiling the answer to one events request.
//!
//! Invariants it keeps: a spoiled page still has a complete HTTP framing (Content-Length matches what is
//! sent), so what the client sees is exactly the fault described, not a transport error.

use std::time::Duration;

use http::{HeaderValue, Response};

use crate::standin::{json_answer, status_or_500, Body};

/// What to answer instead of the normal answer, once.
#[derive(Clone, Debug)]
pub enum ApiFault {
    /// Answered instead of the normal answer (`Retry-After` in seconds when given).
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// 200 with the normal headers, but the JSON body cut in the middle (Content-Length matches the cut body,
    /// so the client sees a complete HTTP answer whose JSON does not parse).
    TornBody,
    /// A full page (count == limit) with no X-Search_after header. When fewer events than the limit are
    /// available, `X-Limit` reports the number returned so that the page still looks full.
    FullPageWithoutCursor,
    /// Drop the connection without answering (the request body is read first).
    CloseConnection,
    /// Answer normally after this delay.
    Delay(Duration),
}

/// The answer given instead of the normal one: `body` as is, with `Retry-After` in seconds when given.
pub(super) fn status_answer(status: u16, body: &str, retry_after: Option<u64>) -> Response<Body> {
    let mut answer = json_answer(status_or_500(status), body.to_string());
    if let Some(seconds) = retry_after {
        answer
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    answer
}

/// Spoils a page about to be sent as `fault` says: its body, its `X-Limit` and its cursor. `count` is the
/// number of events the page holds. Faults that do not spoil pages leave everything as it is.
pub(super) fn spoil_page(
    fault: Option<&ApiFault>,
    count: usize,
    body: &mut Vec<u8>,
    limit: &mut usize,
    cursor: &mut Option<String>,
) {
    match fault {
        Some(ApiFault::TornBody) => body.truncate(body.len() / 2),
        Some(ApiFault::FullPageWithoutCursor) => {
            *cursor = None;
            *limit = (*limit).min(count);
        }
        _ => {}
    }
}
