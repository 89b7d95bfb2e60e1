//! A throughput measurement of the API stand-in: a million events pulled page by page over one keep-alive
//! connection, as an agent would. Run with
//! `cargo test --release --lib standin::jumpcloud::throughput -- --ignored --nocapture`.

use super::handler::EVENTS_PATH;
use super::query::now_ns;
use super::*;
use crate::standin::data::{format_timestamp, EventFactory};
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures throughput on a million events; run by hand in release"]
async fn pull_a_million_events() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let now = now_ns(SystemTime::now());
    let started = std::time::Instant::now();
    let events = EventFactory::new(1).mix(1_000_000, now - 86_400_000_000_000, now - 1_000_000_000);
    println!("generated in {:?}", started.elapsed());
    let started = std::time::Instant::now();
    api.add_events(events);
    println!("added in {:?}", started.elapsed());

    // One keep-alive connection, as an agent would use.
    let mut stream = tokio::net::TcpStream::connect(api.local_addr())
        .await
        .unwrap();
    let start_time = format_timestamp(now - 2 * 86_400_000_000_000);
    let mut cursor: Option<String> = None;
    let (mut total, mut bytes, mut pages) = (0usize, 0usize, 0usize);
    let started = std::time::Instant::now();
    let mut buffer = Vec::new();
    loop {
        let body = match &cursor {
            Some(cursor) => format!(
                r#"{{"service":["all"],"start_time":"{start_time}","limit":10000,"search_after":{cursor}}}"#
            ),
            None => {
                format!(r#"{{"service":["all"],"start_time":"{start_time}","limit":10000}}"#)
            }
        };
        let request = format!(
            "POST {EVENTS_PATH} HTTP/1.1\r\nHost: x\r\nx-api-key: demo-api-key\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // Read the head, then exactly Content-Length bytes.
        buffer.clear();
        let head_end = loop {
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buffer.extend_from_slice(&chunk[..n]);
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|line| {
                line.strip_prefix(name)
                    .map(|v| v.trim_start_matches(':').trim().to_string())
            })
        };
        let length: usize = header("Content-Length").unwrap().parse().unwrap();
        while buffer.len() < head_end + length {
            let mut chunk = vec![0u8; 1 << 20];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buffer.extend_from_slice(&chunk[..n]);
        }
        let count: usize = header("X-Result-Count").unwrap().parse().unwrap();
        total += count;
        bytes += length;
        pages += 1;
        if count < 10000 {
            break;
        }
        cursor = header("X-Search_after");
    }
    let elapsed = started.elapsed();
    println!(
        "pulled {total} events ({} MB) in {pages} pages in {elapsed:?}: {:.0} events/s",
        bytes / 1_000_000,
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(total, 1_000_000);
}
