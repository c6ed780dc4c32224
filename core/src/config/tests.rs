//! Parsing, rendering, error locations and validation of `Config`.

use super::*;
use proptest::prelude::*;

/// Path of the example file relative to this source file.
const EXAMPLE_TOML: &str = include_str!("../../../switchboard.example.toml");

fn err(src: &str) -> ConfigError {
    match Config::from_toml(src) {
        Ok(c) => panic!("expected an error for {src:?}, got {c:?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_err(src: &str, key: &str, line: usize, column: usize) -> ConfigError {
    let e = err(src);
    assert_eq!((e.key.as_str(), e.line, e.column), (key, line, column), "{e}");
    e
}

#[test]
fn empty_document_is_the_default() {
    assert_eq!(Config::from_toml(""), Ok(Config::default()));
    assert_eq!(Config::default().route.len(), 3);
}

#[test]
fn example_file_is_the_default() {
    assert_eq!(Config::from_toml(EXAMPLE_TOML), Ok(Config::default()));
}

#[test]
fn default_round_trips() {
    let c = Config::default();
    assert_eq!(Config::from_toml(&c.to_toml()), Ok(c));
}

#[test]
fn non_default_round_trips() {
    let mut c = Config::default();
    c.server.listen = "[::1]:9000".to_owned();
    c.server.workers = 4;
    c.server.close_timeout = Duration::from_millis(1500);
    c.limits.connect_rate_per_ip = 0.1;
    c.limits.max_frame_bytes = Some(Size(1000));
    c.limits.max_handshaking = 7;
    c.limits.max_handshaking_per_ip = 3;
    c.limits.ipv6_prefix = 56;
    c.server.trusted_proxies = vec!["10.0.0.0/8".parse().expect("valid"), "::1".parse().expect("valid")];
    c.server.proxy_protocol = true;
    c.limits.slow_consumer = SlowConsumerPolicy::Drop;
    c.heartbeat.idle_timeout = Duration::ZERO;
    c.heartbeat.pong_timeout = Duration::from_nanos(1_000_000_123);
    c.rate_limit.on_exceed = RateLimitAction::Close;
    c.compression.level = 9;
    c.http.api_key = "s3cr\"et".to_owned();
    c.broker.kind = BrokerKind::Redis;
    c.broker.backoff.max = Duration::from_secs(7200);
    c.broker.backoff.jitter = 1.0;
    c.drain.interval = Duration::from_secs(90);
    c.pusher.activity_timeout = Duration::from_secs(30);
    c.pusher.max_event_bytes = Size(100 * 1024);
    c.pusher.max_client_events_per_second = 0;
    c.pusher.app = vec![
        PusherApp::new("1", "k1", "s3cr\"et"),
        PusherApp {
            enabled: false,
            client_events: true,
            user_authentication: true,
            max_connections: 5,
            subscription_count: true,
            ..PusherApp::new("app-2", "k2", "s2")
        },
    ];
    c.route = vec![RouteConfig {
        path: "/feed".to_owned(),
        mode: RouteMode::Pubsub,
        allowed_origins: vec!["https://a.example".to_owned()],
        subprotocols: vec!["v2".to_owned(), "v1".to_owned()],
        client_publish: false,
        slow_consumer: Some(SlowConsumerPolicy::Drop),
    }];
    let text = c.to_toml();
    assert_eq!(Config::from_toml(&text), Ok(c), "{text}");
}

#[test]
fn durations_and_sizes_parse() {
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("0"), Some(Duration::ZERO));
    assert_eq!(parse_duration("25"), None);
    assert_eq!(parse_duration("s"), None);
    assert_eq!(parse_duration("1.2.3s"), None);
    assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
    assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    assert_eq!(Size::parse("64KiB"), Some(Size(65536)));
    assert_eq!(Size::parse("2KB"), Some(Size(2000)));
    assert_eq!(Size::parse("512B"), Some(Size(512)));
    assert_eq!(Size::parse("1.5MiB"), Some(Size(1_572_864)));
    assert_eq!(Size::parse("1 parsec"), None);
    let c = Config::from_toml("[http]\nmax_body_bytes = 1234\n");
    assert_eq!(c.map(|c| c.http.max_body_bytes), Ok(Size(1234)));
}

#[test]
fn routes_replace_defaults_and_are_found() {
    let c = Config::from_toml("[[route]]\npath = \"/x\"\nmode = \"echo\"\nslow_consumer = \"drop\"\n");
    let Ok(c) = c else { panic!("{c:?}") };
    assert_eq!(c.route.len(), 1);
    let Some((0, r)) = c.route("/x") else { panic!("route /x missing") };
    assert_eq!(c.slow_consumer_for(r), SlowConsumerPolicy::Drop);
    assert!(c.route("/echo").is_none());
    assert_eq!(Config::default().route("/ws").map(|(i, _)| i), Some(2));
}

#[test]
fn unknown_keys() {
    assert_err("bogus = 1\n", "bogus", 1, 1);
    let e = assert_err("[server]\nworkers = 2\n  bogus = 1\n", "server.bogus", 3, 3);
    assert!(e.message.starts_with("unknown key `bogus`"), "{e}");
    assert_err("[broker.backoff]\nmin = \"1s\"\nmaxx = \"2s\"\n", "broker.backoff.maxx", 3, 1);
    let src = "[[route]]\npath = \"/a\"\nmode = \"echo\"\n[[route]]\npath = \"/b\"\nmode = \"echo\"\norigins = []\n";
    assert_err(src, "route[1].origins", 7, 1);
}

#[test]
fn wrong_type() {
    let e = assert_err("[server]\nworkers = \"four\"\n", "server.workers", 2, 11);
    assert!(e.message.contains("invalid type"), "{e}");
    assert_err("[compression]\nenabled = 1\n", "compression.enabled", 2, 11);
    assert_err("[heartbeat]\nping_interval = 25\n", "heartbeat.ping_interval", 2, 17);
}

#[test]
fn bad_duration_matches_documented_display() {
    let e = assert_err("# comment\n[heartbeat]\nping_interval = \"25 parsecs\"\n", "heartbeat.ping_interval", 3, 17);
    assert_eq!(
        e.to_string(),
        "config error at line 3, column 17: heartbeat.ping_interval: \
         invalid duration \"25 parsecs\" (use e.g. \"25s\", \"100ms\")"
    );
}

#[test]
fn bad_size() {
    let e = assert_err("[limits]\nsend_queue_bytes = \"1 parsec\"\n", "limits.send_queue_bytes", 2, 20);
    assert!(e.message.starts_with("invalid size"), "{e}");
    assert_err("[http]\nmax_body_bytes = -5\n", "http.max_body_bytes", 2, 18);
}

#[test]
fn bad_enum_value() {
    let e = assert_err("[limits]\nslow_consumer = \"panic\"\n", "limits.slow_consumer", 2, 17);
    assert!(e.message.contains("unknown variant `panic`"), "{e}");
    assert_err("[[route]]\npath = \"/a\"\nmode = \"relay\"\n", "route[0].mode", 3, 8);
}

#[test]
fn route_errors() {
    let dup = "[[route]]\npath = \"/a\"\nmode = \"echo\"\n\n[[route]]\npath = \"/a\"\nmode = \"pubsub\"\n";
    let e = assert_err(dup, "route[1].path", 6, 8);
    assert!(e.message.contains("duplicate"), "{e}");
    assert_err("[[route]]\nmode = \"echo\"\npath = \"a\"\n", "route[0].path", 3, 8);
    let missing = "[[route]]\npath = \"/a\"\nmode = \"echo\"\n\n[[route]]\npath = \"/b\"\n";
    let e = assert_err(missing, "route[1].mode", 5, 1);
    assert!(e.message.contains("missing required key `mode`"), "{e}");
    assert_err("route = []\n", "route", 1, 9);
    let inline = "route = [{ path = \"/a\", mode = \"echo\", subprotocols = [\"a b\"] }]";
    assert_err(inline, "route[0].subprotocols[0]", 1, 56);
}

#[test]
fn validation_errors() {
    assert_err("[heartbeat]\npong_timeout = \"0s\"\n", "heartbeat.pong_timeout", 2, 16);
    assert_err("[compression]\nlevel = 12\n", "compression.level", 2, 9);
    assert_err("[broker.backoff]\njitter = 2.0\n", "broker.backoff.jitter", 2, 10);
    assert_err("[server]\nlisten = \"localhost\"\n", "server.listen", 2, 10);
    assert_err("[server]\nmax_header_bytes = 255\n", "server.max_header_bytes", 2, 20);
    assert_err("[server]\nworkers = 1025\n", "server.workers", 2, 11);
    let both = "[limits]\nmax_message_bytes = \"64KiB\"\nmax_frame_bytes = \"1MiB\"\n";
    assert_err(both, "limits.max_frame_bytes", 3, 19);
    assert_err("[limits]\nipv6_prefix = 0\n", "limits.ipv6_prefix", 2, 15);
    assert_err("[limits]\nmax_handshaking = 0\n", "limits.max_handshaking", 2, 19);
    let e = assert_err("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", "server.trusted_proxies[0]", 2, 20);
    assert!(e.message.contains("10.0.0.0/33"), "{e}");
    assert_err("[broker.backoff]\nmin = \"10s\"\n", "broker.backoff.min", 2, 7);
    assert_err("[broker]\nkind = \"redis\"\nurl = \"http://x\"\n", "broker.url", 3, 7);
    assert_err("[broker]\nkind = \"redis-cluster\"\nurl = \"redis://h:7000/2\"\n", "broker.url", 3, 7);
    assert_err(
        "[broker]\nkind = \"redis-cluster\"\nurls = [\"redis://h:7000\", \"redis://h:7001/1\"]\n",
        "broker.urls[1]",
        3,
        27,
    );
    assert_err("[broker]\nkind = \"redis-cluster\"\nprefix = \"a{b}\"\n", "broker.prefix", 3, 10);
    assert_err(
        "[broker]\nkind = \"redis\"\nurls = [\"rediss://a:6380\", \"redis://b:6379\"]\n",
        "broker.urls[1]",
        3,
        28,
    );
    assert_err("[broker]\nkind = \"redis\"\ntls_ca = \"ca.pem\"\n", "broker.tls_ca", 3, 10);
    assert_err("[broker.breaker]\nfailure_threshold = 0\n", "broker.breaker.failure_threshold", 2, 21);
    let e = assert_err("[heartbeat]\nping_interval = \"18446744073709551615s\"\n", "heartbeat.ping_interval", 2, 17);
    assert!(e.message.contains("too long"), "{e}");
    assert_err("[heartbeat]\nping_interval = \"000.0000003s\"\n", "heartbeat.ping_interval", 2, 17);
}

#[test]
fn tls_errors_name_the_key_and_line() {
    let e = assert_err("[tls]\ncert = \"server.pem\"\n", "tls.key", 2, 8);
    assert!(e.message.contains("private key"), "{e}");
    assert_err("[tls]\n\nkey = \"key.pem\"\n", "tls.cert", 3, 7);
    let e = assert_err("[tls]\nmin_version = \"1.1\"\n", "tls.min_version", 2, 15);
    assert!(e.message.contains("1.2"), "{e}");
    let config = Config::from_toml("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nmin_version = \"1.3\"\n");
    let Ok(config) = config else { panic!("{config:?}") };
    assert_eq!((config.tls.enabled(), config.tls.min_version), (true, TlsVersion::V1_3));
    assert_eq!(Config::from_toml(&config.to_toml()), Ok(config));
}

#[test]
fn the_readme_internet_example_is_valid() {
    let readme = include_str!("../../../README.md");
    let section = readme.split("## Exposing it to the internet").nth(1).unwrap_or_default();
    let block = section.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).unwrap_or_default();
    let config = Config::from_toml(block);
    let Ok(config) = config else { panic!("README example: {config:?}") };
    assert_eq!(config.limits.max_connections_per_ip, 100);
    assert_eq!(config.server.trusted_proxies.len(), 1);
}

#[test]
fn frame_limit_follows_a_smaller_message_limit() {
    let small = Config::from_toml("[limits]\nmax_message_bytes = 1024\n");
    assert_eq!(small.map(|c| c.limits.frame_limit()), Ok(Size(1024)));
    assert_eq!(Config::default().limits.frame_limit(), Size::MIB);
    let big = Config::from_toml("[limits]\nmax_message_bytes = \"4MiB\"\n");
    assert_eq!(big.map(|c| c.limits.frame_limit()), Ok(Size::MIB));
}

#[test]
fn a_config_built_in_code_is_checked_like_a_file() {
    let mut c = Config::default();
    c.heartbeat.ping_interval = Duration::ZERO;
    let e = c.validate().expect_err("zero ping interval");
    assert_eq!((e.key.as_str(), e.line), ("heartbeat.ping_interval", 0));
    assert_eq!(e.to_string(), "config error: heartbeat.ping_interval: must be greater than 0s");
    c.heartbeat.ping_interval = Duration::from_secs(1);
    c.heartbeat.idle_timeout = Duration::MAX;
    assert_eq!(c.validate().map_err(|e| e.key), Err("heartbeat.idle_timeout".to_owned()));
    c.heartbeat.idle_timeout = Duration::ZERO;
    c.rate_limit.messages_per_second = f64::NAN;
    assert_eq!(c.validate().map_err(|e| e.key), Err("rate_limit.messages_per_second".to_owned()));
    assert_eq!(Config::default().validate(), Ok(()));
}

#[test]
fn unwritten_keys_fall_back_to_their_table() {
    let src = "[limits]\nslow_consumer = \"drop\"\n";
    let Ok(doc) = DeTable::parse(src) else { panic!("valid toml") };
    let nodes = SpanIndex::new(doc.get_ref());
    assert_eq!(nodes.locate("limits.max_frame_bytes", None), 0..8);
    assert_eq!(nodes.locate("drain.batch", None), 0..0);
}

#[test]
fn syntax_error_has_position() {
    let e = assert_err("[server]\nworkers = 1\n[limits\n", "", 3, 8);
    assert!(e.to_string().starts_with("config error at line 3, column 8: "), "{e}");
    assert_err("a = \"é\" b\n", "", 1, 9);
}

const PUSHER_APPS: &str = "[[pusher.app]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n\n[[pusher.app]]\nid = \"2\"\nkey = \"k2\"\nsecret = \"s2\"\n";

#[test]
fn pusher_defaults_are_the_documented_ones() {
    let p = PusherConfig::default();
    assert_eq!(p.activity_timeout, Duration::from_secs(120));
    assert_eq!(p.max_event_bytes, Size(10 * 1024));
    assert_eq!((p.max_event_name_bytes, p.max_channel_name_bytes), (200, 200));
    assert_eq!((p.max_channels_per_event, p.max_batch_events, p.max_presence_members), (100, 10, 100));
    assert_eq!(p.max_presence_member_bytes, Size(2048));
    assert_eq!(p.max_client_events_per_second, 10);
    assert_eq!(p.user_authentication_timeout, Duration::from_secs(30));
    assert!(p.app.is_empty());
}

#[test]
fn pusher_apps_parse_with_their_defaults() {
    let c = Config::from_toml(PUSHER_APPS);
    let Ok(c) = c else { panic!("{c:?}") };
    assert_eq!(c.pusher.app, vec![PusherApp::new("1", "k", "s"), PusherApp::new("2", "k2", "s2")]);
    let app = &c.pusher.app[0];
    assert!(app.enabled && !app.client_events && !app.user_authentication && !app.subscription_count);
    assert_eq!(app.max_connections, 0);
}

#[test]
fn the_example_app_parses_once_uncommented() {
    let section = EXAMPLE_TOML.split("# [[pusher.app]]").nth(1).unwrap_or_default();
    let block: String = section.lines().skip(1).map_while(|l| l.strip_prefix("# ")).map(|l| format!("{l}\n")).collect();
    let c = Config::from_toml(&format!("[[pusher.app]]\n{block}"));
    let Ok(c) = c else { panic!("{c:?}\n{block}") };
    assert_eq!(c.pusher.app, vec![PusherApp::new("app-id", "app-key", "app-secret")]);
}

#[test]
fn pusher_errors() {
    // Writing a key twice in one table is the TOML parser's error, before any rule.
    let e = assert_err(&format!("{PUSHER_APPS}key = \"k\"\n"), "", 10, 1);
    assert!(e.message.contains("duplicate key"), "{e}");
    let dup_key = PUSHER_APPS.replace("k2", "k");
    let e = assert_err(&dup_key, "pusher.app[1].key", 8, 7);
    assert_eq!(e.message, "duplicate app key \"k\" (already used by pusher.app[0])");
    let dup_id = PUSHER_APPS.replace("id = \"2\"", "id = \"1\"");
    let e = assert_err(&dup_id, "pusher.app[1].id", 7, 6);
    assert_eq!(e.message, "duplicate app id \"1\" (already used by pusher.app[0])");
    for bad in ["a/b", "a b", "a?b", "a#b", "a%20", "a\\tb"] {
        let e = assert_err(&PUSHER_APPS.replace("k2", bad), "pusher.app[1].key", 8, 7);
        assert!(e.message.contains("URL path"), "{bad}: {e}");
        assert_err(&PUSHER_APPS.replace("\"2\"", &format!("\"{bad}\"")), "pusher.app[1].id", 7, 6);
    }
    assert_err(&PUSHER_APPS.replace("\"k2\"", "\"\""), "pusher.app[1].key", 8, 7);
    assert_err(&PUSHER_APPS.replace("\"1\"", "\"\""), "pusher.app[0].id", 2, 6);
    let e = assert_err(&PUSHER_APPS.replace("\"s2\"", "\"\""), "pusher.app[1].secret", 9, 10);
    assert_eq!(e.message, "must not be empty");
    let e = assert_err("[[pusher.app]]\nid = \"1\"\nkey = \"k\"\n", "pusher.app[0].secret", 1, 1);
    assert!(e.message.contains("missing required key `secret`"), "{e}");
    let e = assert_err(&format!("{PUSHER_APPS}clients_events = true\n"), "pusher.app[1].clients_events", 10, 1);
    assert!(e.message.starts_with("unknown key"), "{e}");
    let e = assert_err("[pusher]\nactivity_timeout = \"0s\"\n", "pusher.activity_timeout", 2, 20);
    assert_eq!(e.message, "must be at least 1s (clients refuse 0)");
    let e = assert_err("[pusher]\nactivity_timeout = \"500ms\"\n", "pusher.activity_timeout", 2, 20);
    assert!(e.message.contains("at least 1s"), "{e}");
    let e = assert_err("[pusher]\nactivity_timeout = \"1500ms\"\n", "pusher.activity_timeout", 2, 20);
    assert!(e.message.contains("whole number of seconds"), "{e}");
    assert_err("[pusher]\nactivity_timeout = 120\n", "pusher.activity_timeout", 2, 20);
    for key in [
        "max_event_bytes",
        "max_event_name_bytes",
        "max_channel_name_bytes",
        "max_channels_per_event",
        "max_batch_events",
        "max_presence_members",
        "max_presence_member_bytes",
    ] {
        assert_err(&format!("[pusher]\n{key} = 0\n"), &format!("pusher.{key}"), 2, key.len() + 4);
    }
    assert_err("[pusher]\nuser_authentication_timeout = \"0s\"\n", "pusher.user_authentication_timeout", 2, 31);
    assert_err("[pusher]\nmax_client_events_per_second = -1\n", "pusher.max_client_events_per_second", 2, 32);
    let unlimited = Config::from_toml("[pusher]\nmax_client_events_per_second = 0\n");
    assert_eq!(unlimited.map(|c| c.pusher.max_client_events_per_second), Ok(0));
}

#[test]
fn pusher_rules_hold_for_a_config_built_in_code() {
    let mut c = Config::default();
    c.pusher.app = vec![PusherApp::new("1", "k", "s"), PusherApp::new("2", "k", "s")];
    assert_eq!(c.validate().map_err(|e| e.key), Err("pusher.app[1].key".to_owned()));
    c.pusher.app[1].key = "k2".to_owned();
    assert_eq!(c.validate(), Ok(()));
    c.pusher.user_authentication_timeout = Duration::MAX;
    assert_eq!(c.validate().map_err(|e| e.key), Err("pusher.user_authentication_timeout".to_owned()));
}

#[test]
fn secrets_are_redacted_for_people_and_kept_for_the_round_trip() {
    let mut c = Config::default();
    c.http.api_key = "api-s3cret".to_owned();
    c.pusher.app = vec![PusherApp::new("1", "k", "app-s3cret-1"), PusherApp::new("2", "k2", "app-s3cret-2")];
    let shown = c.to_toml_redacted();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert_eq!(shown.matches("\"<redacted>\"").count(), 3, "{shown}");
    let Ok(read_back) = Config::from_toml(&shown) else { panic!("redacted output must parse:\n{shown}") };
    assert_eq!(read_back, c.redacted());
    assert_eq!(read_back.pusher.app[1].key, "k2");
    // The original is untouched, and the plain rendering still round-trips exactly.
    assert_eq!(c.pusher.app[0].secret, "app-s3cret-1");
    assert_eq!(Config::from_toml(&c.to_toml()), Ok(c.clone()));
    // An empty key means "disabled", and stays so.
    assert_eq!(Config::default().redacted(), Config::default());
    assert!(!format!("{c:?}").contains("app-s3cret"), "Debug shows a pusher secret");
    assert!(format!("{:?}", c.pusher.app[0]).contains("secret: <redacted>"));
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(src in ".{0,200}") {
        let _ = Config::from_toml(&src);
    }

    #[test]
    fn toml_like_text_never_panics(src in "[\\[\\]a-z_.=\"' 0-9\n{},#-]{0,300}") {
        let _ = Config::from_toml(&src);
    }

    #[test]
    fn mangled_example_never_panics(at in 0usize..4000, len in 0usize..40, with in ".{0,8}") {
        let mut src = EXAMPLE_TOML.to_owned();
        let start = at.min(src.len());
        let end = (start + len).min(src.len());
        if src.is_char_boundary(start) && src.is_char_boundary(end) {
            src.replace_range(start..end, &with);
        }
        let _ = Config::from_toml(&src);
    }
}

#[test]
fn debug_output_never_shows_the_api_key() {
    let mut c = Config::default();
    c.http.api_key = "s3cret-key".to_owned();
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret-key"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn admin_enabled_without_a_credential_is_refused_at_its_line() {
    let src = "[server]\nworkers = 1\n\n[admin]\nenabled = true\n";
    let Err(e) = Config::from_toml(src) else { panic!("an open admin API must be refused") };
    assert_eq!((e.key.as_str(), e.line), ("admin.password", 5), "{e}");
    assert!(e.to_string().contains("admin.token"), "{e}");
    assert!(Config::from_toml("[admin]\nenabled = true\ntoken = \"t\"\n").is_ok());
    assert!(Config::from_toml("[admin]\nenabled = true\npassword = \"p\"\n").is_ok());
    let Err(e) = Config::from_toml("[admin]\nenabled = true\ntoken = \"t\"\npath = \"admin\"\n") else {
        panic!("a relative admin path must be refused")
    };
    assert_eq!((e.key.as_str(), e.line), ("admin.path", 4));
    let Err(e) = Config::from_toml("[admin]\nenabled = true\ntoken = \"t\"\npath = \"/ws\"\n") else {
        panic!("a route under the admin path must be refused")
    };
    assert_eq!(e.key, "route[2].path");
    let beside = "[admin]\nenabled = true\ntoken = \"t\"\npath = \"/w\"\n";
    assert!(Config::from_toml(beside).is_ok(), "/ws is beside /w, not under it");
}

#[test]
fn admin_credentials_are_redacted() {
    let admin = AdminConfig {
        enabled: true,
        password: "pw-s3cret".to_owned(),
        token: "tok-s3cret".to_owned(),
        path: "/admin".to_owned(),
    };
    let c = Config { admin, ..Config::default() };
    let shown = c.to_toml_redacted();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert_eq!(shown.matches("\"<redacted>\"").count(), 2, "{shown}");
    assert!(!format!("{c:?}").contains("s3cret"));
    assert_eq!(Config::from_toml(&c.to_toml()), Ok(c));
}
