//! Real networks and several customers, against local servers only: a CONNECT proxy (with and without
//! basic auth, from the configuration or the environment, NO_PROXY), a stand-in behind TLS with a private
//! CA, two streams each to its own intake, a revoked key, a stream whose intake refuses it, service
//! accounts (token expiry, 401), secrets from files, regions.
//!
//! The proxy environment is passed to `Config::parse` as a map: no test reads or changes the process
//! environment, so they run in parallel safely.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::network::{ConnectProxy, TestCa};
use crate::support::*;
use jcdi_forwarder::config::{Config, JumpcloudAuth, ProxyConfig};
use jcdi_forwarder::harness::{path_value, ConfigBuilder};
use jcdi_forwarder::standin::{
    ApiEvent, ApiOptions, ApiStandIn, EventFactory, IntakeOptions, IntakeStandIn, TokenOptions,
    TokenStandIn,
};

/// Fast polling and retries for tests.
trait Fast {
    /// The JumpCloud side: short intervals, pages of 100, quick retries.
    fn fast_poll(self) -> Self;
    /// The forwarder's quick retries.
    fn fast_send(self) -> Self;
}

impl Fast for ConfigBuilder {
    fn fast_poll(self) -> ConfigBuilder {
        self.poll_interval(Duration::from_secs(1))
            .page_size(100)
            .initial_lookback(Duration::from_secs(3 * 3600))
            .overlap(Duration::from_secs(60))
            .min_request_interval(Duration::ZERO)
            .api_retry(Duration::from_millis(100), Duration::from_millis(500))
    }

    fn fast_send(self) -> ConfigBuilder {
        self.intake_retry(Duration::from_millis(100), Duration::from_millis(500))
    }
}

/// Parses with `env` as the environment. The local metrics endpoint is turned off: tests run in parallel
/// and would all want its port.
fn parse_with(builder: &ConfigBuilder, env: &HashMap<&str, String>) -> Config {
    let loaded = builder
        .clone()
        .admin_disabled()
        .parse_with_env(&|name| env.get(name).cloned())
        .unwrap_or_else(|err| panic!("test config is invalid: {err}"));
    loaded.config
}

/// The queue in `dir`, this API and this intake with the test keys, polling fast.
fn polling(dir: &tempfile::TempDir, api_url: &str, intake_url: &str) -> ConfigBuilder {
    ConfigBuilder::new(&dir.path().join("queue"))
        .jumpcloud(api_url, API_KEY)
        .sekoia(intake_url, INTAKE_KEY)
        .fast_poll()
}

fn events(seed: u64, count: usize) -> Vec<ApiEvent> {
    let now = now_ns();
    EventFactory::new(seed).mix(count, now - 2 * 3600 * SECOND, now - 120 * SECOND)
}

/// Events indexed late, inside the overlap window (60 s) of a stream already polled.
fn recent(seed: u64, count: usize) -> Vec<ApiEvent> {
    let now = now_ns();
    EventFactory::new(seed).mix(count, now - 40 * SECOND, now - 20 * SECOND)
}

async fn api(key: &str, org: Option<&str>) -> ApiStandIn {
    ApiStandIn::start(ApiOptions {
        api_key: key.to_string(),
        org_id: org.map(str::to_string),
        ..ApiOptions::default()
    })
    .await
    .expect("API stand-in")
}

async fn intake(key: &str) -> IntakeStandIn {
    IntakeStandIn::start(IntakeOptions {
        intake_key: key.to_string(),
        ..IntakeOptions::default()
    })
    .await
    .expect("intake stand-in")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_basic_auth_carries_both_destinations() {
    let proxy = ConnectProxy::start(Some(("agent", "pr0xy-s3cret"))).await;
    let (api, intake) = (api(API_KEY, None).await, intake(INTAKE_KEY).await);
    let sent = events(11, 300);
    api.add_events(sent.clone());
    let dir = tempfile::tempdir().expect("dir");
    let builder = polling(&dir, &api.base_url(), &intake.base_url())
        .fast_send()
        .set("jumpcloud.proxy", proxy.url_with("agent", "pr0xy-s3cret"))
        .set("sekoia.proxy", proxy.url_with("agent", "pr0xy-s3cret"));
    let config = parse_with(&builder, &HashMap::new());
    assert!(
        !format!("{config:?}").contains("pr0xy-s3cret"),
        "proxy credentials never print"
    );
    let queue = jcdi_forwarder::agent::open_queue(&config)
        .await
        .expect("queue");
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&intake, &sent, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
    assert!(
        proxy.tunnels_to_port(api.local_addr().port()) >= 1,
        "API through the proxy: {:?}",
        proxy.tunnels()
    );
    assert!(
        proxy.tunnels_to_port(intake.local_addr().port()) >= 1,
        "intake through the proxy: {:?}",
        proxy.tunnels()
    );
    assert_eq!(proxy.refused(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_proxy_credentials_say_so_without_showing_them() {
    let proxy = ConnectProxy::start(Some(("agent", "right"))).await;
    let (api, intake) = (api(API_KEY, None).await, intake(INTAKE_KEY).await);
    api.add_events(events(12, 5));
    let dir = tempfile::tempdir().expect("dir");
    let builder = polling(&dir, &api.base_url(), &intake.base_url())
        .fast_send()
        .set("jumpcloud.proxy", proxy.url_with("agent", "wr0ng-pass"));
    let config = parse_with(&builder, &HashMap::new());
    let queue = jcdi_forwarder::agent::open_queue(&config)
        .await
        .expect("queue");
    let agent = InProcessAgent::start(&config, &queue);
    let seen = wait_until(LONG, || agent.metrics.snapshot().last_poll_error.is_some()).await;
    let error = agent.metrics.snapshot().last_poll_error.unwrap_or_default();
    agent.stop().await.expect("the agent stops cleanly");
    assert!(seen);
    assert!(error.contains("asks for credentials (407"), "{error}");
    assert!(
        error.contains(&proxy.addr.to_string()),
        "names the proxy: {error}"
    );
    assert!(
        !error.contains("wr0ng-pass") && !error.contains("agent:"),
        "{error}"
    );
    assert!(proxy.refused() >= 1);
    assert_eq!(api.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_proxy_is_used_except_for_no_proxy_hosts() {
    let proxy = ConnectProxy::start(None).await;
    let (api, intake) = (api(API_KEY, None).await, intake(INTAKE_KEY).await);
    let sent = events(13, 200);
    api.add_events(sent.clone());
    let dir = tempfile::tempdir().expect("dir");
    // The API is named `localhost`, listed in no_proxy: direct. The intake, 127.0.0.1: through the proxy.
    let builder = polling(
        &dir,
        &format!("http://localhost:{}", api.local_addr().port()),
        &intake.base_url(),
    )
    .fast_send();
    let env = HashMap::from([
        ("http_proxy", proxy.url()),
        ("https_proxy", proxy.url()),
        ("no_proxy", "example.org, localhost".to_string()),
    ]);
    let config = parse_with(&builder, &env);
    let queue = jcdi_forwarder::agent::open_queue(&config)
        .await
        .expect("queue");
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&intake, &sent, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(
        proxy.tunnels_to_port(api.local_addr().port()),
        0,
        "no_proxy host went direct"
    );
    assert!(
        proxy.tunnels_to_port(intake.local_addr().port()) >= 1,
        "{:?}",
        proxy.tunnels()
    );
}

#[test]
fn proxy_settings_from_the_environment_and_the_file() {
    let base = ConfigBuilder::empty()
        .set("jumpcloud.api_key", "k")
        .set("sekoia.intake_key", "i");
    // Upper case wins over lower case, as with curl; ALL_PROXY fills in.
    let env = HashMap::from([
        ("HTTPS_PROXY", "http://u:p@proxy.corp:3128".to_string()),
        ("https_proxy", "http://other:1".to_string()),
        ("ALL_PROXY", "proxy.corp:8080".to_string()),
        ("NO_PROXY", ".internal".to_string()),
    ]);
    let config = parse_with(&base, &env);
    match &config.streams[0].jumpcloud.transport.proxy {
        ProxyConfig::Environment {
            http,
            https,
            no_proxy,
        } => {
            assert_eq!(
                https.as_ref().map(|s| s.expose()),
                Some("http://u:p@proxy.corp:3128")
            );
            assert_eq!(
                http.as_ref().map(|s| s.expose()),
                Some("http://proxy.corp:8080")
            );
            assert_eq!(no_proxy, ".internal");
        }
        other => panic!("expected the environment's proxy, got {other:?}"),
    }
    // Per section: `proxy` overrides the environment, "none" goes direct.
    let per_section = base
        .clone()
        .set("jumpcloud.proxy", "none")
        .set("sekoia.proxy", "http://p.corp:3128");
    let config = parse_with(&per_section, &env);
    assert_eq!(
        config.streams[0].jumpcloud.transport.proxy,
        ProxyConfig::Direct
    );
    assert!(
        matches!(&config.streams[0].sekoia.transport.proxy, ProxyConfig::Url(url) if url.expose() == "http://p.corp:3128")
    );
    // No variable at all: direct.
    assert_eq!(
        parse_with(&base, &HashMap::new()).streams[0]
            .sekoia
            .transport
            .proxy,
        ProxyConfig::Direct
    );
    // Unusable values are problems that never show the credentials.
    let bad = HashMap::from([(
        "HTTPS_PROXY",
        "https://u:hunter2@proxy.corp:3128".to_string(),
    )]);
    let err = base
        .clone()
        .set("jumpcloud.proxy", "socks5://u:hunter2@h:1")
        .parse_with_env(&|name| bad.get(name).cloned())
        .expect_err("bad proxies")
        .to_string();
    assert!(
        err.contains("jumpcloud.proxy = \"socks5://***@h:1\" uses socks5://"),
        "{err}"
    );
    assert!(
        err.contains(
            "the environment variable HTTPS_PROXY = \"https://***@proxy.corp:3128\" uses https://"
        ),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_fails_clearly_without_ca_file_and_works_with_it() {
    let ca = TestCa::new();
    let (api, intake) = (api(API_KEY, None).await, intake(INTAKE_KEY).await);
    let front = ca.front(api.local_addr()).await;
    let sent = events(14, 150);
    api.add_events(sent.clone());
    let dir = tempfile::tempdir().expect("dir");
    let ca_path = dir.path().join("corp-ca.pem");
    std::fs::write(&ca_path, &ca.ca_pem).expect("write CA");
    let builder = polling(&dir, &front.base_url(), &intake.base_url()).fast_send();

    // Without ca_file: the poller says which host, what is wrong, and which setting fixes it.
    let config = parse_with(&builder, &HashMap::new());
    let queue = jcdi_forwarder::agent::open_queue(&config)
        .await
        .expect("queue");
    let agent = InProcessAgent::start(&config, &queue);
    assert!(wait_until(LONG, || agent.metrics.snapshot().last_poll_error.is_some()).await);
    let error = agent.metrics.snapshot().last_poll_error.unwrap_or_default();
    agent.stop().await.expect("the agent stops cleanly");
    assert!(
        error.contains(
            "the TLS certificate of localhost is signed by a CA this host does not trust"
        ),
        "{error}"
    );
    assert!(error.contains("jumpcloud.ca_file"), "{error}");
    assert_eq!(
        api.requests(),
        0,
        "nothing was sent over an unverified connection"
    );

    // With it: everything arrives.
    let config = parse_with(
        &builder.set("jumpcloud.ca_file", path_value(&ca_path)),
        &HashMap::new(),
    );
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&intake, &sent, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
}

#[test]
fn a_ca_file_that_is_not_a_pem_bundle_is_a_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate\n").expect("write");
    let err = ConfigBuilder::empty()
        .set("jumpcloud.api_key", "k")
        .set("jumpcloud.ca_file", path_value(&path))
        .set("sekoia.intake_key", "i")
        .set("sekoia.ca_file", "/nonexistent/ca.pem")
        .parse_with_env(&|_| None)
        .expect_err("bad CA files")
        .to_string();
    assert!(
        err.contains("jumpcloud.ca_file") && err.contains("holds no certificate"),
        "{err}"
    );
    assert!(
        err.contains("sekoia.ca_file = \"/nonexistent/ca.pem\" cannot be read"),
        "{err}"
    );
}

/// Two organizations, each with its own API stand-in (checking `x-org-id`) and its own intake.
struct TwoOrgs {
    api_a: ApiStandIn,
    api_b: ApiStandIn,
    intake_a: IntakeStandIn,
    intake_b: IntakeStandIn,
    dir: tempfile::TempDir,
}

const ORG_A: &str = "5f0c1a2b3c4d5e6f7a8b9c0d";
const ORG_B: &str = "60aa1b2c3d4e5f6a7b8c9d0e";

impl TwoOrgs {
    async fn start() -> TwoOrgs {
        TwoOrgs {
            api_a: api("key-a", Some(ORG_A)).await,
            api_b: api("key-b", Some(ORG_B)).await,
            intake_a: intake("intake-a").await,
            intake_b: intake("intake-b").await,
            dir: tempfile::tempdir().expect("dir"),
        }
    }

    /// The MSP form: shared settings in [jumpcloud]/[sekoia], one named destination, one inline key.
    /// `acme_extra`: more keys of acme's stream; `change`: any other setting.
    fn config(
        &self,
        acme_extra: Vec<(&str, toml::Value)>,
        change: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    ) -> Config {
        let acme = [
            ("name", "acme".into()),
            ("base_url", self.api_a.base_url().into()),
            ("org_id", ORG_A.into()),
            ("api_key", "${ACME_KEY}".into()),
            ("destination", "acme".into()),
        ];
        let builder = ConfigBuilder::new(&self.dir.path().join("queue"))
            .fast_poll()
            .set("sekoia.intake_url", self.intake_b.base_url())
            .fast_send()
            .set("sekoia.acme.intake_url", self.intake_a.base_url())
            .set("sekoia.acme.intake_key_file", path_value(&self.key_file()))
            .stream(acme.into_iter().chain(acme_extra))
            .stream([
                ("name", "globex".into()),
                ("base_url", self.api_b.base_url().into()),
                ("org_id", ORG_B.into()),
                ("api_key", "key-b".into()),
                ("intake_key", "intake-b".into()),
            ]);
        parse_with(
            &change(builder),
            &HashMap::from([("ACME_KEY", "key-a".to_string())]),
        )
    }

    fn key_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("acme-intake-key");
        if !path.exists() {
            std::fs::write(&path, "intake-a\n").expect("write key");
            set_mode(&path, 0o600);
        }
        path
    }
}

#[cfg(unix)]
fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(not(unix))]
fn set_mode(_path: &std::path::Path, _mode: u32) {}

fn received_set(intake: &IntakeStandIn) -> std::collections::HashSet<String> {
    intake.received().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_each_reach_only_their_own_intake_and_a_revoked_key_stalls_only_its_stream() {
    let orgs = TwoOrgs::start().await;
    let (a, b) = (events(21, 400), events(22, 300));
    orgs.api_a.add_events(a.clone());
    orgs.api_b.add_events(b.clone());
    let config = orgs.config(vec![], |b| b);
    assert_eq!(config.streams.len(), 2);
    let queue = jcdi_forwarder::agent::open_queue(&config)
        .await
        .expect("queue");
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&orgs.intake_a, &a, LONG)
        .await
        .expect("every event arrives");
    wait_all_arrived(&orgs.intake_b, &b, LONG)
        .await
        .expect("every event arrives");
    let (got_a, got_b) = (received_set(&orgs.intake_a), received_set(&orgs.intake_b));
    assert!(
        b.iter().all(|e| !got_a.contains(&e.raw)),
        "no event of globex at acme's intake"
    );
    assert!(
        a.iter().all(|e| !got_b.contains(&e.raw)),
        "no event of acme at globex's intake"
    );
    assert_eq!(orgs.intake_a.received_count(), a.len());
    assert_eq!(orgs.intake_b.received_count(), b.len());

    // acme's key is revoked: globex keeps flowing.
    orgs.api_a.set_api_key("rotated-key");
    let (late_a, late_b) = (recent(23, 50), recent(24, 60));
    orgs.api_a.add_events(late_a.clone());
    orgs.api_b.add_events(late_b.clone());
    wait_all_arrived(&orgs.intake_b, &late_b, LONG)
        .await
        .expect("every event arrives");
    // The last-error slot is shared by the streams until metrics get a stream label: count refusals.
    assert!(wait_until(LONG, || agent.metrics.snapshot().api_requests_failed >= 1).await);
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(
        orgs.intake_a.received_count(),
        a.len(),
        "nothing more from the revoked stream"
    );
    assert!(queue.cursor("acme").expect("cursor").is_some());
    assert!(queue.cursor("globex").expect("cursor").is_some());
    assert_eq!(queue.cursor("default").expect("cursor"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_intake_refuses_its_key_fills_only_its_share_of_the_queue() {
    let orgs = TwoOrgs::start().await;
    // acme's intake refuses the key it is given: its events pile up, up to its half of the queue.
    orgs.intake_a.set_intake_key("a-new-key");
    let a = events(31, 600);
    orgs.api_a.add_events(a.clone());
    let config = orgs.config(vec![("page_size", 20.into())], |b| {
        b.queue_max_bytes("200KiB")
    });
    let queue = jcdi_forwarder::agent::open_queue(&config)
        .await
        .expect("queue");
    let agent = InProcessAgent::start(&config, &queue);
    assert!(
        wait_until(LONG, || agent.metrics.snapshot().polls_paused_queue_full
            >= 1)
        .await,
        "acme pauses at its share"
    );
    // globex goes on: events added now arrive although acme's backlog is stuck.
    for round in 0..3 {
        let b = recent(32 + round, 80);
        orgs.api_b.add_events(b.clone());
        wait_all_arrived(&orgs.intake_b, &b, LONG)
            .await
            .expect("every event arrives");
    }
    let depth = queue.depth();
    assert!(
        depth.bytes <= 100 * 1024 + 40 * 3 * 1024,
        "acme holds about its share (100 KiB, plus one page): {depth:?}"
    );
    assert_eq!(orgs.intake_a.received_count(), 0);
    // The key is fixed at the intake: acme's events all arrive (its configuration error retry is slow:
    // restart the agent instead of waiting for it).
    agent.stop().await.expect("the agent stops cleanly");
    orgs.intake_a.set_intake_key("intake-a");
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&orgs.intake_a, &a, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(duplicates(&orgs.intake_a), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_renews_its_token_before_expiry_and_after_a_401() {
    let tokens = TokenStandIn::start(TokenOptions {
        client_id: "svc-client".into(),
        client_secret: "svc-s3cret".into(),
        lifetime: Duration::from_secs(3),
    })
    .await
    .expect("token stand-in");
    let api = ApiStandIn::start(ApiOptions {
        api_key: "no-key-used".into(),
        org_id: Some(ORG_A.into()),
        tokens: Some(tokens.clone()),
        ..ApiOptions::default()
    })
    .await
    .expect("API stand-in");
    let intake = intake(INTAKE_KEY).await;
    let sent = events(41, 200);
    api.add_events(sent.clone());
    let dir = tempfile::tempdir().expect("dir");
    let secret_path = dir.path().join("client_secret");
    std::fs::write(&secret_path, "svc-s3cret\n").expect("write");
    set_mode(&secret_path, 0o600);
    let loaded = polling(&dir, &api.base_url(), &intake.base_url())
        .remove("jumpcloud.api_key")
        .set("jumpcloud.org_id", ORG_A)
        .set("jumpcloud.client_id", "svc-client")
        .set("jumpcloud.client_secret_file", path_value(&secret_path))
        .set("jumpcloud.token_url", tokens.token_url())
        .fast_send()
        .admin_disabled()
        .parse_with_env(&|_| None)
        .expect("valid");
    assert!(
        !loaded.warnings.iter().any(|w| w.contains("client_secret")),
        "{:?}",
        loaded.warnings
    );
    let config = loaded.config;
    assert!(matches!(
        config.streams[0].jumpcloud.auth,
        JumpcloudAuth::ServiceAccount { .. }
    ));
    let queue = jcdi_forwarder::agent::open_queue(&config)
        .await
        .expect("queue");
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&intake, &sent, LONG)
        .await
        .expect("every event arrives");

    // Polling every second with 3-second tokens: renewed ahead of expiry, so none is refused.
    assert!(
        wait_until(LONG, || tokens.issued() >= 3).await,
        "tokens renewed"
    );
    assert_eq!(tokens.refused(), 0, "a token was used after it expired");

    // Revoked early: the 401 makes the agent ask for a new token and carry on at once.
    tokens.revoke_all();
    let late = recent(42, 40);
    api.add_events(late.clone());
    wait_all_arrived(&intake, &late, Duration::from_secs(20))
        .await
        .expect("every event arrives");
    let snapshot = agent.metrics.snapshot();
    agent.stop().await.expect("the agent stops cleanly");
    assert!(tokens.refused() >= 1, "the revoked token was refused once");
    assert_eq!(duplicates(&intake), 0);
    assert!(
        snapshot.last_poll_error.is_none(),
        "{:?}",
        snapshot.last_poll_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_secret_is_a_clear_configuration_error() {
    let tokens = TokenStandIn::start(TokenOptions::default())
        .await
        .expect("token stand-in");
    let api = ApiStandIn::start(ApiOptions {
        org_id: Some(ORG_A.into()),
        tokens: Some(tokens.clone()),
        ..ApiOptions::default()
    })
    .await
    .expect("API stand-in");
    let intake = intake(INTAKE_KEY).await;
    let dir = tempfile::tempdir().expect("dir");
    let builder = polling(&dir, &api.base_url(), &intake.base_url())
        .remove("jumpcloud.api_key")
        .set("jumpcloud.org_id", ORG_A)
        .set("jumpcloud.client_id", "demo-client")
        .set("jumpcloud.client_secret", "wr0ng-s3cret")
        .set("jumpcloud.token_url", tokens.token_url());
    let config = parse_with(&builder, &HashMap::new());
    let queue = jcdi_forwarder::agent::open_queue(&config)
        .await
        .expect("queue");
    let agent = InProcessAgent::start(&config, &queue);
    assert!(wait_until(LONG, || agent.metrics.snapshot().last_poll_error.is_some()).await);
    let error = agent.metrics.snapshot().last_poll_error.unwrap_or_default();
    agent.stop().await.expect("the agent stops cleanly");
    assert!(
        error.contains("refused the service account (401 Unauthorized)"),
        "{error}"
    );
    assert!(error.contains("jumpcloud.client_secret"), "{error}");
    assert!(!error.contains("wr0ng-s3cret"), "{error}");
    assert_eq!(api.requests(), 0);
}

#[test]
fn secrets_from_files() {
    let dir = tempfile::tempdir().expect("dir");
    let private = dir.path().join("api_key");
    std::fs::write(&private, "from-a-file\n").expect("write");
    set_mode(&private, 0o600);
    let shared = dir.path().join("intake_key");
    std::fs::write(&shared, "intake-from-file").expect("write");
    set_mode(&shared, 0o644);
    let env = HashMap::from([("CREDENTIALS_DIRECTORY", dir.path().display().to_string())]);
    let loaded = ConfigBuilder::empty()
        .set("jumpcloud.api_key_file", "${CREDENTIALS_DIRECTORY}/api_key")
        .set(
            "sekoia.intake_key_file",
            "${CREDENTIALS_DIRECTORY}/intake_key",
        )
        .parse_with_env(&|name| env.get(name).cloned())
        .expect("valid");
    assert_eq!(
        loaded.config.streams[0].jumpcloud.auth,
        JumpcloudAuth::ApiKey(jcdi_forwarder::config::Secret::new("from-a-file"))
    );
    assert_eq!(
        loaded.config.streams[0].sekoia.intake_key.expose(),
        "intake-from-file"
    );
    if cfg!(unix) {
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].starts_with("sekoia.intake_key_file = ")
                && loaded.warnings[0]
                    .contains("is readable by group or others (mode 644): chmod 600"),
            "{:?}",
            loaded.warnings
        );
    }
    let err = ConfigBuilder::empty()
        .set("jumpcloud.api_key", "k")
        .set("jumpcloud.api_key_file", path_value(&private))
        .set("sekoia.intake_key_file", "/nonexistent/key")
        .parse_with_env(&|_| None)
        .expect_err("invalid")
        .to_string();
    assert!(
        err.contains("jumpcloud.api_key and api_key_file are both set"),
        "{err}"
    );
    assert!(
        err.contains("sekoia.intake_key_file = \"/nonexistent/key\" cannot be read"),
        "{err}"
    );
    assert!(!err.contains("from-a-file"), "{err}");
}

#[test]
fn regions_and_overrides() {
    let keys = ConfigBuilder::empty()
        .set("jumpcloud.api_key", "k")
        .set("sekoia.intake_key", "i");
    let regions = |jumpcloud: &str, sekoia: &str| {
        keys.clone()
            .set("jumpcloud.region", jumpcloud)
            .set("sekoia.region", sekoia)
    };
    let c = parse_with(&regions("eu", "usa1"), &HashMap::new());
    assert_eq!(
        c.streams[0].jumpcloud.base_url,
        "https://api.eu.jumpcloud.com"
    );
    assert_eq!(
        c.streams[0].sekoia.intake_url,
        "https://intake.usa1.sekoia.io/api/v1/intake-http"
    );
    let c = parse_with(&regions("in", "fra1"), &HashMap::new());
    assert_eq!(
        c.streams[0].jumpcloud.base_url,
        "https://api.in.jumpcloud.com"
    );
    assert_eq!(c.streams[0].sekoia.intake_url, "https://intake.sekoia.io");
    let loaded = keys
        .clone()
        .set("jumpcloud.region", "eu")
        .set("jumpcloud.base_url", "https://jc.example")
        .parse_with_env(&|_| None)
        .expect("valid");
    assert_eq!(
        loaded.config.streams[0].jumpcloud.base_url,
        "https://jc.example"
    );
    assert_eq!(
        loaded.warnings,
        vec!["jumpcloud.region is ignored: base_url is set and wins"]
    );
    let err = regions("asia", "fra3")
        .parse_with_env(&|_| None)
        .expect_err("unknown regions")
        .to_string();
    assert!(
        err.contains(
            "jumpcloud.region = \"asia\" is not a JumpCloud region: use one of us, eu, in"
        ),
        "{err}"
    );
    assert!(
        err.contains("sekoia.region = \"fra3\" is not a known Sekoia.io region"),
        "{err}"
    );
}

#[test]
fn stream_problems_are_all_listed_with_their_keys() {
    let text = r#"
[jumpcloud]
region = "eu"
[sekoia.acme]
intake_key = "a"
[[streams]]
name = "acme"
api_key = "k"
destination = "acme"
[[streams]]
name = "acme"
client_id = "svc"
client_secret = "s"
destinaton = "acme"
[[streams]]
name = "bad name"
api_key = "k"
destination = "nowhere"
[[streams]]
api_key = "k"
intake_key = "x"
"#;
    let err = Config::parse(text, "c.toml", &|_| None)
        .expect_err("invalid")
        .to_string();
    for needle in [
        "streams.acme.name is used by two streams",
        "streams.acme.org_id is missing: a service account (client_id) must name the organization",
        "streams.acme.destinaton is not a known key (did you mean \"destination\"?)",
        "streams[2].name = \"bad name\" may hold only letters, digits, '-' and '_'",
        "streams.#2.destination = \"nowhere\" names no [sekoia.nowhere] section (defined: acme)",
        "streams[3].name is missing: each stream needs a unique name",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // Named destinations belong to the several-stream form.
    let err = Config::parse(
        "[jumpcloud]\napi_key = \"k\"\n[sekoia]\nintake_key = \"i\"\n[sekoia.acme]\nintake_key = \"a\"\n",
        "c.toml",
        &|_| None,
    )
    .expect_err("invalid")
    .to_string();
    assert!(
        err.contains("[sekoia.acme] is a named destination, used only by [[streams]]"),
        "{err}"
    );
}

#[test]
fn the_documented_msp_example_parses() {
    let doc = include_str!("../../docs/configuration-network.md");
    let start = doc.find("```toml msp").expect("the MSP example block") + "```toml msp".len();
    let end = start + doc[start..].find("```").expect("end of the block");
    let dir = tempfile::tempdir().expect("dir");
    for name in ["acme-intake", "globex-secret"] {
        let path = dir.path().join(name);
        std::fs::write(&path, "x").expect("write");
        set_mode(&path, 0o600);
    }
    let env = HashMap::from([
        ("MSP_API_KEY", "msp".to_string()),
        ("GLOBEX_INTAKE_KEY", "g".to_string()),
        ("INITECH_INTAKE_KEY", "i".to_string()),
        ("CREDENTIALS_DIRECTORY", dir.path().display().to_string()),
    ]);
    let loaded = Config::parse(&doc[start..end], "msp.toml", &|n| env.get(n).cloned())
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let names: Vec<&str> = loaded
        .config
        .streams
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["acme", "globex", "initech"]);
    let globex = &loaded.config.streams[1];
    assert!(matches!(
        globex.jumpcloud.auth,
        JumpcloudAuth::ServiceAccount { .. }
    ));
    assert_eq!(globex.jumpcloud.base_url, "https://api.eu.jumpcloud.com");
    assert_eq!(
        globex.sekoia.intake_url,
        "https://intake.fra2.sekoia.io/api/v1/intake-http"
    );
    assert_eq!(
        loaded.config.streams[0].jumpcloud.auth,
        JumpcloudAuth::ApiKey(jcdi_forwarder::config::Secret::new("msp"))
    );
}
