//! Hostile and malformed answers, through the binary: a JumpCloud that answers things that are not pages
//! of events, pages too large, events without timestamps; a proxy that refuses the tunnel; a certificate
//! for other names. Each test asserts the log, what reached the intake stand-in, and what was kept.
//!
//! Self-contained: the JumpCloud side is a scripted server ([`crate::support::scripted`]: it answers
//! exactly the bytes a test queues, then empty pages), the intake is the crate's stand-in, everything on
//! 127.0.0.1.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jcdi_forwarder::harness::wait_until;

use crate::support::scripted::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------------------
// Pages that are not pages of events.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_are_not_events_are_never_sent_and_are_kept() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let e1 = event("mixed-1", 30);
    let e2 = event("plain-2", 20);
    // The issue's page, as many times as the agent asks; then the same values among an event (read again
    // through the overlap window, say); then a plain page.
    api.push_times(
        page(
            br#"[1,"two",null,[3]]"#.to_vec(),
            &[("X-Request-Id", "req-only")],
        ),
        5,
    );
    api.push(events_page(
        &[
            e1.clone(),
            "1".into(),
            "\"two\"".into(),
            "null".into(),
            "[3]".into(),
        ],
        "req-mixed",
    ));
    api.push(events_page(std::slice::from_ref(&e2), "req-plain"));
    let dir = tempfile::tempdir().expect("dir");
    let mut agent = Agent::start(
        dir.path(),
        &config_text(dir.path(), &api.base_url(), &intake, "", ""),
        &[],
    );
    assert_received_exactly(&intake, &[e1, e2]).await;
    let log = agent.stop().await;
    assert!(
        log.contains(
            "JumpCloud sent an unusable page (4 of its values are not events (JSON objects)): asking again (try 1 of 5)"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "JumpCloud's page held 4 values that are not events (JSON objects), 5 times in a row: they are never \
             sent; its bytes are kept in the dead-letter store as #"
        ) && log.contains("the page's events are collected and collection goes on"),
        "{log}"
    );
    assert_eq!(
        log.matches("values that are not events (JSON objects), 5 times")
            .count(),
        1,
        "kept once: {log}"
    );
    let queries = api.queries();
    assert!(queries.len() >= 7, "{queries:?}");
    assert!(
        queries[1..5].iter().all(|q| *q == queries[0]),
        "the same request asked again: {queries:?}"
    );
    let letters = agent.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]["event"],
        serde_json::json!([1, "two", null, [3]])
    );
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(
            "not an event, kept for inspection and never sent: 4 of its values are not events"
        ) && reason.contains("request id req-only")
            && reason.contains("query {\"service\":[\"all\"]"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_answers_are_asked_again_kept_once_and_nothing_is_lost() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let html =
        b"<html><head><title>502 Bad Gateway</title></head><body>upstream down</body></html>"
            .to_vec();
    let html_page = |id: &str| {
        page(
            html.clone(),
            &[("Content-Type", "text/html"), ("X-Request-Id", id)],
        )
    };
    // One request answered four different ways, then HTML until it is given up on, twice.
    api.push(html_page("req-html-1"));
    api.push(page(
        b"[{\"id\":\"\xff\xfe\"}]".to_vec(),
        &[("X-Request-Id", "req-utf8")],
    ));
    api.push(page(
        format!("[{}]", event("cursor", 40)).into_bytes(),
        &[
            ("X-Limit", "1"),
            ("X-Result-Count", "1"),
            ("X-Search_after", "[17,\"abc"),
            ("X-Request-Id", "req-cursor"),
        ],
    ));
    api.push(page(
        b"{\"message\":\"internal error\"}".to_vec(),
        &[("X-Request-Id", "req-object")],
    ));
    api.push(html_page("req-html-5"));
    api.push_times(html_page("req-html-again"), 5);
    let (e3, e4) = (event("after-3", 10), event("after-4", 9));
    api.push(events_page(&[e3.clone(), e4.clone()], "req-good"));
    let dir = tempfile::tempdir().expect("dir");
    let mut agent = Agent::start(
        dir.path(),
        &config_text(dir.path(), &api.base_url(), &intake, "", ""),
        &[],
    );
    assert_received_exactly(&intake, &[e3, e4]).await;
    let log = agent.stop().await;
    let html_problem = format!(
        "HTML or XML, not JSON: expected value at line 1 column 1; {} bytes, Content-Type \"text/html\"",
        html.len()
    );
    for said in [
        format!("JumpCloud sent an unusable page ({html_problem}): asking again (try 1 of 5)"),
        "JumpCloud sent an unusable page (not UTF-8 text: invalid unicode code point at line 1 column 9; 13 bytes".to_string(),
        "JumpCloud sent an unusable page (X-Search_after is not JSON: ".to_string(),
        "JumpCloud sent an unusable page (a JSON object, not an array of events: ".to_string(),
        format!(
            "poll failed: JumpCloud sent an unusable page ({html_problem}), 5 times in a row for the same request \
             (last request id req-html-5): its bytes are kept in the dead-letter store as #"
        ),
        "(last request id req-html-again): its bytes were kept in the dead-letter store when it was first given \
         up on; nothing is skipped, asking again"
            .to_string(),
    ] {
        assert!(log.contains(&said), "the log never said {said:?}:\n{log}");
    }
    let letters = agent.dead_letters();
    assert_eq!(
        letters.len(),
        1,
        "kept once for the whole run of failures: {letters:?}"
    );
    assert_eq!(
        letters[0]["event"].as_str().map(str::as_bytes),
        Some(&html[..])
    );
    assert!(letters[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("request id req-html-5")));
    assert!(!log.contains(API_KEY) && !log.contains(INTAKE_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_transports_are_retried_and_nothing_is_lost() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    // A Content-Length that lies (more than is sent), a server that drips a byte a second, 60 KB of headers.
    api.push(Reply::Bytes(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n[{\"id\":\"cut".to_vec(),
    ));
    let Reply::Bytes(slow) = page(b"[]".to_vec(), &[]) else {
        unreachable!()
    };
    api.push(Reply::Drip(slow, Duration::from_secs(1)));
    let padding: Vec<(String, String)> = (0..600)
        .map(|n| (format!("X-Pad-{n}"), "x".repeat(90)))
        .collect();
    let padding: Vec<(&str, &str)> = padding
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    api.push(page(b"[]".to_vec(), &padding));
    let e5 = event("after-5", 5);
    api.push(events_page(std::slice::from_ref(&e5), "req-good"));
    let dir = tempfile::tempdir().expect("dir");
    let config = config_text(
        dir.path(),
        &api.base_url(),
        &intake,
        "request_timeout = \"2s\"",
        "",
    );
    let mut agent = Agent::start(dir.path(), &config, &[]);
    assert_received_exactly(&intake, &[e5]).await;
    let log = agent.stop().await;
    let url = format!(
        "JumpCloud API at {}/insights/directory/v1/events did not answer: ",
        api.base_url()
    );
    for said in [
        format!("{url}the answer was cut off or unreadable: "),
        format!("{url}no answer within 2s"),
        format!("{url}client error (SendRequest): message head is too large"),
    ] {
        assert!(log.contains(&said), "the log never said {said:?}:\n{log}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Size.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_max_response_bytes_is_refused_naming_the_setting() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let big = format!("[{}]", event(&"x".repeat(2 * 1024 * 1024), 5));
    api.push(page(big.clone().into_bytes(), &[]));
    let dir = tempfile::tempdir().expect("dir");
    let config = config_text(
        dir.path(),
        &api.base_url(),
        &intake,
        "max_response_bytes = \"1MiB\"",
        "",
    );
    let mut agent = Agent::start(dir.path(), &config, &[]);
    let expected = format!(
        "JumpCloud's answer to {}/insights/directory/v1/events is larger than jumpcloud.max_response_bytes (the \
         answer announces {} bytes (Content-Length), over the limit of 1048576 bytes: not read): if its pages \
         really are this large, raise jumpcloud.max_response_bytes, or lower jumpcloud.page_size and \
         jumpcloud.catch_up_page_size",
        api.base_url(),
        big.len()
    );
    let log = agent.wait_log(&expected).await;
    let log = log
        .lines()
        .find(|l| l.contains(&expected))
        .unwrap_or_default()
        .to_string();
    assert!(log.contains("ERROR"), "a configuration error: {log}");
    agent.stop().await;
    assert_eq!(intake.received_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_huge_event_costs_a_small_multiple_of_its_size() {
    const PAD: usize = 64 * 1024 * 1024;
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let dir = tempfile::tempdir().expect("dir");
    let mut agent = Agent::start(
        dir.path(),
        &config_text(dir.path(), &api.base_url(), &intake, "", ""),
        &[],
    );
    // The agent at rest, having polled: what it holds without the answer.
    assert!(
        wait_until(LONG, || api.queries().len() >= 2).await,
        "the agent polls"
    );
    let resting = agent.status_kb("VmHWM");
    let huge = format!(
        "{{\"id\":\"huge\",\"timestamp\":\"{}\",\"pad\":\"{}\"}}",
        (chrono::Utc::now() - chrono::Duration::minutes(3)).format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        "x".repeat(PAD)
    );
    let small = event("small", 3);
    let body = format!("[{huge},{small}]");
    let answer_kb = body.len() as u64 / 1024;
    api.push(page(body.into_bytes(), &[("X-Request-Id", "req-huge")]));
    drop(huge);
    assert_received_exactly(&intake, &[small]).await;
    agent
        .wait_log("event moved to the dead-letter store and kept there, never sent: the event is ")
        .await;
    let peak = agent.status_kb("VmHWM");
    let log = agent.stop().await;
    // Measured: about 4 answers (the answer read once, the queue's copy of the event and sled's, the event
    // read back from the queue and its dead letter). 5 leaves room for the allocator.
    assert!(
        peak.saturating_sub(resting) <= 5 * answer_kb,
        "one answer of {answer_kb} kB took {} kB beyond the {resting} kB at rest (over 5 times its size)\n{log}",
        peak - resting
    );
    assert!(api.pending() == 0);
}

// ---------------------------------------------------------------------------------------------------------
// Events without a timestamp.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_without_a_timestamp_are_delivered_counted_and_logged_once() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let untimed = [
        "{\"id\":\"no-time-1\",\"service\":\"sso\"}".to_string(),
        "{\"id\":\"no-time-2\",\"timestamp\":\"yesterday\"}".to_string(),
        "{\"id\":\"no-time-3\",\"timestamp\":null}".to_string(),
    ];
    let timed = event("timed", 4);
    api.push(events_page(
        &[untimed[0].clone(), timed.clone(), untimed[1].clone()],
        "req-a",
    ));
    api.push(events_page(&[untimed[2].clone()], "req-b"));
    let dir = tempfile::tempdir().expect("dir");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = config_text(
        dir.path(),
        &api.base_url(),
        &intake,
        "",
        &format!("[api]\nlisten = \"{admin}\"\n"),
    );
    let mut agent = Agent::start(dir.path(), &config, &[]);
    let mut expected = untimed.to_vec();
    expected.push(timed);
    assert_received_exactly(&intake, &expected).await;
    let metrics = scrape(admin);
    let log = agent.stop().await;
    assert!(
        metrics.contains("jcdi_forwarder_events_without_timestamp_total{stream=\"default\"} 3"),
        "{metrics}"
    );
    let said = "JumpCloud sent events without a usable timestamp (for example the event with id \"no-time-1\"): \
                they are delivered, filed under the time they were read; \
                jcdi_forwarder_events_without_timestamp_total counts them (this is logged once)";
    assert_eq!(log.matches(said).count(), 1, "logged once: {log}");
}

/// `GET /metrics` of the agent's endpoint.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("asked");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("answer");
    text
}

// ---------------------------------------------------------------------------------------------------------
// A proxy that refuses.

/// A proxy stand-in that answers every CONNECT with `status_line` (and a body, as real proxies do), and
/// records the requests it got.
struct RefusingProxy {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefusingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RefusingProxy {
    async fn start(status_line: &'static str) -> RefusingProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&head).to_string());
                    let body = "<html><body>Access denied</body></html>";
                    let answer = format!(
                        "{status_line}\r\nServer: tinyproxy/1.11.1\r\nContent-Type: text/html\r\nWWW-Authenticate: Basic realm=\"tinyproxy\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RefusingProxy {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_answers_401_to_connect_names_the_credentials() {
    let proxy = RefusingProxy::start("HTTP/1.0 401 Unauthorized").await;
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let dir = tempfile::tempdir().expect("dir");
    let proxy_line = format!("proxy = \"http://agent:wr0ng-pass@{}\"", proxy.addr);
    let config = config_text(dir.path(), &api.base_url(), &intake, &proxy_line, "");
    let mut agent = Agent::start(dir.path(), &config, &[]);
    let expected = format!(
        "the proxy http://***@{} asks for credentials (401 Unauthorized) and refused those of the user \"agent\" \
         in jumpcloud.proxy: check the user and password there",
        proxy.addr
    );
    agent.wait_log(&expected).await;
    let log = agent.stop().await;
    assert!(!log.contains("wr0ng-pass"), "{log}");
    assert!(
        !log.contains("NO_PROXY") && !log.contains("allow-list"),
        "{log}"
    );
    let requests = proxy.requests();
    assert!(
        requests[0].starts_with(&format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n", api.addr))
            && requests[0].contains("Proxy-Authorization: Basic "),
        "{requests:?}"
    );
    assert!(api.queries().is_empty(), "nothing reached JumpCloud");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_of_the_environment_that_refuses_the_tunnel_names_the_allow_list_and_no_proxy() {
    let proxy = RefusingProxy::start("HTTP/1.1 403 Forbidden").await;
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let dir = tempfile::tempdir().expect("dir");
    let config = config_text(dir.path(), &api.base_url(), &intake, "", "");
    let proxy_url = format!("http://{}", proxy.addr);
    let mut agent = Agent::start(dir.path(), &config, &[("HTTP_PROXY", &proxy_url)]);
    let expected = format!(
        "the proxy http://{0} refused to open a tunnel (CONNECT) to {1} (403 Forbidden): ask for {1} to be \
         allowed through it (its allow-list), or list 127.0.0.1 in NO_PROXY if it must be reached directly",
        proxy.addr, api.addr
    );
    agent.wait_log(&expected).await;
    agent.stop().await;
    assert!(api.queries().is_empty(), "nothing reached JumpCloud");
}

// ---------------------------------------------------------------------------------------------------------
// A certificate for other names.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_other_names_lists_the_names_it_covers() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hostile test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![
        "other.example".to_string(),
        "*.other.example".to_string(),
    ])
    .expect("leaf params")
    .signed_by(&leaf_key, &ca, &ca_key)
    .expect("leaf certificate");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .expect("server TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let front = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // The client refuses the certificate: the handshake ends there.
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    let intake = intake().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("CA written");
    let config = config_text(
        dir.path(),
        &format!("https://localhost:{port}"),
        &intake,
        &format!("ca_file = {:?}", ca_file.display().to_string()),
        "",
    );
    let mut agent = Agent::start(dir.path(), &config, &[]);
    agent
        .wait_log(
            "the TLS certificate of localhost is not valid for the name localhost: it covers \"other.example\", \
             \"*.other.example\"; check the URL (base_url, intake_url or region) of jumpcloud",
        )
        .await;
    agent.stop().await;
    front.abort();
}
