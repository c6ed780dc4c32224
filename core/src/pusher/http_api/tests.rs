use super::*;
use crate::pusher::api_auth::verify_api_request;
use proptest::prelude::*;
use serde_json::{Value, json};

fn limits() -> Limits {
    Limits::default()
}

fn route_of<'a>(method: &str, path: &'a str) -> Result<Route<'a>, ApiError> {
    route(method, path, &limits())
}

fn refusal<T: fmt::Debug>(result: Result<T, ApiError>) -> (u16, String) {
    match result {
        Ok(value) => panic!("accepted: {value:?}"),
        Err(e) => (e.status(), e.field().to_owned()),
    }
}

fn trigger(body: &str) -> Result<Trigger, ApiError> {
    parse_trigger(body.as_bytes(), &limits())
}

fn value(text: &str) -> Value {
    match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => panic!("not JSON ({e}): {text}"),
    }
}

// --- Routes -----------------------------------------------------------------------------------

#[test]
fn the_five_endpoints() {
    fn ok<'a>(method: &str, path: &'a str) -> Route<'a> {
        match route_of(method, path) {
            Ok(route) => route,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }
    assert_eq!(ok("POST", "/apps/3/events"), Route::Events { app_id: "3" });
    assert_eq!(ok("POST", "/apps/app-id/batch_events"), Route::BatchEvents { app_id: "app-id" });
    assert_eq!(ok("GET", "/apps/3/channels"), Route::Channels { app_id: "3" });
    assert_eq!(
        ok("GET", "/apps/3/channels/presence-x"),
        Route::Channel { app_id: "3", channel: "presence-x".to_owned() }
    );
    assert_eq!(
        ok("GET", "/apps/3/channels/presence-x/users"),
        Route::Users { app_id: "3", channel: "presence-x".to_owned() }
    );
    // A channel name in the path is percent-decoded.
    assert_eq!(
        ok("GET", "/apps/3/channels/%23server-to-user-1"),
        Route::Channel { app_id: "3", channel: "#server-to-user-1".to_owned() }
    );
    assert_eq!(ok("GET", "/apps/3/channels/presence-%61").app_id(), "3");
}

#[test]
fn anything_else_under_apps_is_no_endpoint() {
    for path in [
        "/apps/",
        "/apps/3",
        "/apps/3/",
        "/apps//events",
        "/apps/3/events/",
        "/apps/3/events/x",
        "/apps/3/nope",
        "/apps/3/channels/",
        "/apps/3/channels/c/",
        "/apps/3/channels/c/members",
        "/apps/3/channels/presence-c/users/x",
        "/apps/3/users/1/terminate_connections",
        "/app/3/events",
        "/events",
        "",
    ] {
        assert_eq!(refusal(route_of("POST", path)), (404, "path".to_owned()), "{path}");
        assert_eq!(refusal(route_of("GET", path)), (404, "path".to_owned()), "{path}");
    }
    let e = route_of("GET", "/apps/3/nope").map(|_| ()).expect_err("404");
    assert_eq!(e.to_string(), "no such endpoint: \"/apps/3/nope\"");
}

#[test]
fn a_known_endpoint_with_another_method_is_405() {
    for (method, path, allowed) in [
        ("GET", "/apps/3/events", "POST"),
        ("PUT", "/apps/3/batch_events", "POST"),
        ("POST", "/apps/3/channels", "GET"),
        ("post", "/apps/3/events", "POST"),
        ("DELETE", "/apps/3/channels/c", "GET"),
        ("POST", "/apps/3/channels/presence-c/users", "GET"),
    ] {
        let e = route_of(method, path).map(|_| ()).expect_err("405");
        assert_eq!((e.status(), e.field()), (405, "method"), "{method} {path}");
        assert_eq!(e.to_string(), format!("{method} {path} is not allowed; use {allowed}"));
    }
    // A long path is clipped in the message (found by the fuzzer).
    let long = format!("/apps/{}/events", "x".repeat(1000));
    let e = route_of("GET", &long).map(|_| ()).expect_err("405");
    assert!(e.to_string().len() < 200, "{e}");
}

#[test]
fn channel_names_in_paths_are_checked() {
    for path in ["/apps/3/channels/a%20b", "/apps/3/channels/%zz", "/apps/3/channels/%ff", "/apps/3/channels/a*b/users"]
    {
        assert_eq!(refusal(route_of("GET", path)), (400, "channel_name".to_owned()), "{path}");
    }
    let long = format!("/apps/3/channels/{}", "c".repeat(201));
    assert_eq!(refusal(route_of("GET", &long)), (400, "channel_name".to_owned()));
    // Users of a channel that has none: 400, as the HTTP API reference says.
    for path in ["/apps/3/channels/c/users", "/apps/3/channels/private-c/users", "/apps/3/channels/presences-c/users"] {
        let e = route_of("GET", path).map(|_| ()).expect_err("400");
        assert_eq!((e.status(), e.field()), (400, "channel_name"), "{path}");
        assert_eq!(e.to_string(), "`channel_name` must be a presence channel to list its users");
    }
}

// --- Query strings ----------------------------------------------------------------------------

#[test]
fn query_strings_decode_into_pairs() {
    let pairs = |q: &str| parse_query(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    assert_eq!(pairs(""), Vec::<(String, String)>::new());
    assert_eq!(
        pairs("auth_key=k&info=user_count%2Csubscription_count&Name=Something%20else&x"),
        [("auth_key", "k"), ("info", "user_count,subscription_count"), ("Name", "Something else"), ("x", "")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    // `+` is a plus (no SDK sends it for a space); `=` after the first is the value's; empty
    // pieces are skipped; %-escapes in either case.
    assert_eq!(
        pairs("a=1+2&&b==c&%C3%a9=%e2%82%AC&"),
        [("a", "1+2"), ("b", "=c"), ("é", "€")].map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    for bad in ["a=%", "a=%2", "a=%zz", "%g0=1", "a=%ff", "a=%C3"] {
        let e = parse_query(bad).expect_err(bad);
        assert_eq!((e.status(), e.field()), (400, "query"), "{bad}");
        assert!(e.to_string().contains("invalid percent-encoding"), "{e}");
    }
    let many = vec!["a=1"; MAX_QUERY_PARAMS].join("&");
    assert_eq!(parse_query(&many).map(|p| p.len()), Ok(MAX_QUERY_PARAMS));
    let too_many = format!("{many}&b=2");
    assert_eq!(refusal(parse_query(&too_many)), (400, "query".to_owned()));
}

#[test]
fn decoded_queries_verify_as_the_sdks_signed_them() {
    // The HTTP API reference's worked example, as the request line carries it.
    let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
                 &body_md5=ec365a775a4cd0599faeb73354201b6f\
                 &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
    let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    let pairs = parse_query(query).unwrap_or_default();
    let verified = verify_api_request(
        "POST",
        "/apps/3/events",
        &pairs,
        body,
        "278d425bdf160c739803",
        "7ad3773142a6692b25b8",
        1_353_088_179,
    );
    assert_eq!(verified, Ok(()));
    // A channels query with its values escaped by a URL library (as Guzzle escapes them for
    // pusher-http-php): signed over the unescaped text (api_auth's test vector).
    let query = "info=user_count%2Csubscription_count&Name=Something%20else&filter_by_prefix=presence-\
                 &auth_version=1.0&auth_timestamp=1353088179&auth_key=278d425bdf160c739803\
                 &auth_signature=4f275e1518da15877c6212161bcea579faaf4db9f158912ded0c003d1175ae2a";
    let pairs = parse_query(query).unwrap_or_default();
    let verified = verify_api_request(
        "GET",
        "/apps/3/channels",
        &pairs,
        b"",
        "278d425bdf160c739803",
        "7ad3773142a6692b25b8",
        1_353_088_179,
    );
    assert_eq!(verified, Ok(()));
    assert_eq!(
        parse_channels_query(&pairs),
        Ok(ChannelsQuery {
            prefix: Some("presence-".to_owned()),
            info: Info { user_count: true, subscription_count: true }
        })
    );
}

// --- Trigger bodies ---------------------------------------------------------------------------

#[test]
fn trigger_bodies_the_sdks_send() {
    // The HTTP API reference's example.
    let doc = trigger(r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#);
    assert_eq!(
        doc,
        Ok(Trigger {
            name: "foo".to_owned(),
            data: r#"{"some":"data"}"#.to_owned(),
            channels: vec!["project-3".to_owned()],
            socket_id: None,
            info: Info::default(),
        })
    );
    // pusher-http-node 5 (`trigger(channels, event, data, {socket_id, info})`).
    let node = trigger(
        r#"{"name":"my-event","data":"{\"message\":\"hello\"}","channels":["my-channel","presence-x"],"socket_id":"123.456","info":"user_count,subscription_count"}"#,
    );
    let Ok(node) = node else { panic!("{node:?}") };
    assert_eq!(node.channels, ["my-channel", "presence-x"]);
    assert_eq!(node.socket_id.as_deref(), Some("123.456"));
    assert_eq!(node.info, Info { user_count: true, subscription_count: true });
    // pusher-http-python (json.dumps: spaces after separators), a single channel as `channel`,
    // a data string that is not JSON, and nulls for the optional fields.
    let python = trigger(r#"{"name": "e", "channel": "c", "data": "plain text", "socket_id": null, "info": null}"#);
    let Ok(python) = python else { panic!("{python:?}") };
    assert_eq!((python.channels, python.data.as_str(), python.socket_id), (vec!["c".to_owned()], "plain text", None));
    // Unknown fields are ignored; a channel named twice is published to once.
    let twice = trigger(r#"{"name":"e","data":"","channels":["a","b","a"],"extra":{"x":[]}}"#);
    assert_eq!(twice.map(|t| t.channels), Ok(vec!["a".to_owned(), "b".to_owned()]));
    // Server-to-user events go through the same endpoint.
    let user = trigger(r##"{"name":"e","data":"x","channel":"#server-to-user-1"}"##);
    assert_eq!(user.map(|t| t.channels), Ok(vec!["#server-to-user-1".to_owned()]));
}

#[test]
fn every_trigger_refusal_names_its_field() {
    let long_name = "e".repeat(201);
    let long_channel = "c".repeat(201);
    let too_many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let cases: Vec<(String, u16, &str)> = vec![
        ("nope".to_owned(), 400, "body"),
        ("[]".to_owned(), 400, "body"),
        ("".to_owned(), 400, "body"),
        (r#"{"name":"e","name":"f","data":"","channel":"c"}"#.to_owned(), 400, "name"),
        (r#"{"data":"","channel":"c"}"#.to_owned(), 400, "name"),
        (r#"{"name":null,"data":"","channel":"c"}"#.to_owned(), 400, "name"),
        (r#"{"name":1,"data":"","channel":"c"}"#.to_owned(), 400, "name"),
        (r#"{"name":"","data":"","channel":"c"}"#.to_owned(), 400, "name"),
        (format!(r#"{{"name":"{long_name}","data":"","channel":"c"}}"#), 400, "name"),
        (r#"{"name":"pusher:subscribe","data":"","channel":"c"}"#.to_owned(), 400, "name"),
        (r#"{"name":"pusher_internal:member_added","data":"","channel":"c"}"#.to_owned(), 400, "name"),
        (r#"{"name":"e","channel":"c"}"#.to_owned(), 400, "data"),
        (r#"{"name":"e","data":{"some":"data"},"channel":"c"}"#.to_owned(), 400, "data"),
        (r#"{"name":"e","data":5,"channel":"c"}"#.to_owned(), 400, "data"),
        (r#"{"name":"e","data":""}"#.to_owned(), 400, "channels"),
        (r#"{"name":"e","data":"","channel":"c","channels":["c"]}"#.to_owned(), 400, "channels"),
        (r#"{"name":"e","data":"","channel":1}"#.to_owned(), 400, "channel"),
        (r#"{"name":"e","data":"","channel":"a b"}"#.to_owned(), 400, "channel"),
        (format!(r#"{{"name":"e","data":"","channel":"{long_channel}"}}"#), 400, "channel"),
        (r#"{"name":"e","data":"","channels":"c"}"#.to_owned(), 400, "channels"),
        (r#"{"name":"e","data":"","channels":[]}"#.to_owned(), 400, "channels"),
        (json!({"name": "e", "data": "", "channels": too_many}).to_string(), 400, "channels"),
        (r#"{"name":"e","data":"","channels":["a",2]}"#.to_owned(), 400, "channels[1]"),
        (r#"{"name":"e","data":"","channels":["a","b*"]}"#.to_owned(), 400, "channels[1]"),
        (r#"{"name":"e","data":"","channel":"c","socket_id":"abc"}"#.to_owned(), 400, "socket_id"),
        (r#"{"name":"e","data":"","channel":"c","socket_id":123.456}"#.to_owned(), 400, "socket_id"),
        (r#"{"name":"e","data":"","channel":"c","info":"members"}"#.to_owned(), 400, "info"),
        (r#"{"name":"e","data":"","channel":"c","info":["user_count"]}"#.to_owned(), 400, "info"),
    ];
    for (body, status, field) in cases {
        assert_eq!(refusal(trigger(&body)), (status, field.to_owned()), "{body}");
    }
    assert_eq!(refusal(parse_trigger(b"{\"name\":\"\xff\"}", &limits())), (400, "body".to_owned()));
    let e = trigger(r#"{"name":"e","data":{},"channel":"c"}"#).map(|_| ()).expect_err("400");
    assert_eq!(e.to_string(), "`data` must be a string (JSON-encode an object first)");
    assert_eq!(e.to_json(), r#"{"error":"`data` must be a string (JSON-encode an object first)","code":400}"#);
    let e = trigger(r#"{"name":"e","data":"","channel":"c","info":"members"}"#).map(|_| ()).expect_err("400");
    assert_eq!(e.to_string(), "`info` asks for \"members\"; the attributes are user_count and subscription_count");
}

#[test]
fn data_over_the_limit_is_413() {
    let small = Limits { max_event_bytes: 10, ..limits() };
    // Measured as the decoded string: `\"` is one byte of data.
    let at_limit = r#"{"name":"e","channel":"c","data":"12345678\"9"}"#;
    assert_eq!(parse_trigger(at_limit.as_bytes(), &small).map(|t| t.data.len()), Ok(10));
    let over = r#"{"name":"e","channel":"c","data":"12345678901"}"#;
    let e = parse_trigger(over.as_bytes(), &small).map(|_| ()).expect_err("413");
    assert_eq!((e.status(), e.field()), (413, "data"));
    assert_eq!(e.to_string(), "`data` is 11 bytes (at most 10)");
    // The configured limits apply: channels per event too.
    let two = Limits { max_channels_per_event: 2, ..limits() };
    assert!(parse_trigger(br#"{"name":"e","data":"","channels":["a","b"]}"#, &two).is_ok());
    let e = parse_trigger(br#"{"name":"e","data":"","channels":["a","b","c"]}"#, &two).map(|_| ()).expect_err("400");
    assert_eq!(e.to_string(), "`channels` names 3 channels (at most 2)");
}

#[test]
fn batches() {
    // pusher-http-node's `triggerBatch([{channel, name, data}])`.
    let body = r#"{"batch":[{"channel":"c","name":"e","data":"1"},{"channel":"presence-x","name":"f","data":"2","socket_id":"1.2","info":"user_count"}]}"#;
    let Ok(batch) = parse_batch(body.as_bytes(), &limits()) else { panic!("a valid batch") };
    assert_eq!(batch.len(), 2);
    assert_eq!(
        (batch[0].name.as_str(), batch[0].channels.as_slice(), batch[0].data.as_str()),
        ("e", &["c".to_owned()][..], "1")
    );
    assert_eq!(batch[1].info, Info { user_count: true, subscription_count: false });
    assert_eq!(batch[1].socket_id.as_deref(), Some("1.2"));
    assert_eq!(parse_batch(br#"{"batch":[]}"#, &limits()), Ok(Vec::new()));

    let ten = Limits { max_batch_events: 2, ..limits() };
    let three = r#"{"batch":[{"channel":"c","name":"e","data":""},{"channel":"c","name":"e","data":""},{"channel":"c","name":"e","data":""}]}"#;
    let e = parse_batch(three.as_bytes(), &ten).map(|_| ()).expect_err("too many");
    assert_eq!((e.status(), e.field(), e.to_string().as_str()), (400, "batch", "`batch` holds 3 events (at most 2)"));

    let cases = [
        ("{}", 400, "batch"),
        (r#"{"batch":null}"#, 400, "batch"),
        (r#"{"batch":{}}"#, 400, "batch"),
        (r#"{"batch":[1]}"#, 400, "batch[0]"),
        (r#"{"batch":[{"channel":"c","name":"e","data":""},"x"]}"#, 400, "batch[1]"),
        (r#"{"batch":[{"channel":"c","name":"e","data":""},{"channel":"c","data":""}]}"#, 400, "batch[1].name"),
        (r#"{"batch":[{"channel":"c","name":"e","data":{}}]}"#, 400, "batch[0].data"),
        (r#"{"batch":[{"channel":"c","name":"e","data":"","data":""}]}"#, 400, "batch[0].data"),
        (r#"{"batch":[{"name":"e","data":""}]}"#, 400, "batch[0].channel"),
        (r#"{"batch":[{"channels":["c"],"name":"e","data":""}]}"#, 400, "batch[0].channels"),
        (r#"{"batch":[{"channel":"c d","name":"e","data":""}]}"#, 400, "batch[0].channel"),
        (r#"{"batch":[{"channel":"c","name":"e","data":"","socket_id":"x"}]}"#, 400, "batch[0].socket_id"),
        (r#"{"batch":[{"channel":"c","name":"e","data":"","info":"x"}]}"#, 400, "batch[0].info"),
        (r#"{"batch":[{"channel":"c","name":"e","data":"12345678901234567890"}]}"#, 413, "batch[0].data"),
        ("[]", 400, "body"),
    ];
    let small = Limits { max_event_bytes: 16, ..limits() };
    for (body, status, field) in cases {
        assert_eq!(refusal(parse_batch(body.as_bytes(), &small)), (status, field.to_owned()), "{body}");
    }
}

// --- Channel queries --------------------------------------------------------------------------

#[test]
fn channels_queries() {
    let q = |pairs: &[(&str, &str)]| parse_channels_query(pairs);
    assert_eq!(q(&[]), Ok(ChannelsQuery::default()));
    assert_eq!(
        q(&[("filter_by_prefix", "presence-"), ("info", "user_count")]),
        Ok(ChannelsQuery {
            prefix: Some("presence-".to_owned()),
            info: Info { user_count: true, subscription_count: false }
        })
    );
    assert_eq!(
        q(&[("info", "subscription_count")]),
        Ok(ChannelsQuery { prefix: None, info: Info { user_count: false, subscription_count: true } })
    );
    assert_eq!(q(&[("info", "")]), Ok(ChannelsQuery::default()));
    // user_count needs the presence- filter, as Pusher says (a 400).
    for pairs in [
        &[("info", "user_count")][..],
        &[("info", "subscription_count,user_count"), ("filter_by_prefix", "private-")][..],
        &[("info", "user_count"), ("filter_by_prefix", "")][..],
        &[("info", "user_count"), ("filter_by_prefix", "presence")][..],
    ] {
        let e = q(pairs).map(|_| ()).expect_err("400");
        assert_eq!((e.status(), e.field()), (400, "info"), "{pairs:?}");
        assert_eq!(e.to_string(), "`info` asks for user_count, which needs filter_by_prefix=presence-");
    }
    assert_eq!(refusal(q(&[("info", "occupied")])), (400, "info".to_owned()));
    let query = ChannelsQuery { prefix: Some("presence-".to_owned()), info: Info::default() };
    assert!(query.matches("presence-a") && !query.matches("private-a"));
    assert!(ChannelsQuery::default().matches("anything"));
}

#[test]
fn channel_queries() {
    let q = |channel: &str, pairs: &[(&str, &str)]| parse_channel_query(channel, pairs);
    assert_eq!(q("c", &[]), Ok(Info::default()));
    assert_eq!(q("c", &[("info", "subscription_count")]), Ok(Info { user_count: false, subscription_count: true }));
    assert_eq!(
        q("presence-c", &[("info", "user_count, subscription_count")]),
        Ok(Info { user_count: true, subscription_count: true })
    );
    for channel in ["c", "private-c", "private-encrypted-c", "cache-c"] {
        let e = q(channel, &[("info", "user_count")]).map(|_| ()).expect_err("400");
        assert_eq!((e.status(), e.field()), (400, "info"), "{channel}");
        assert_eq!(e.to_string(), "`info` asks for user_count, which only presence channels have");
    }
}

// --- Answers ----------------------------------------------------------------------------------

#[test]
fn answers_match_the_reference() {
    let counts = |subscription_count, user_count| ChannelCounts { subscription_count, user_count };
    let both = Info { user_count: true, subscription_count: true };
    let users = Info { user_count: true, subscription_count: false };
    let subs = Info { user_count: false, subscription_count: true };

    assert_eq!(trigger_response(Info::default(), [("c", counts(1, 0))]), "{}");
    assert_eq!(
        trigger_response(both, [("presence-x", counts(2, 1)), ("c", counts(1, 0))]),
        r#"{"channels":{"presence-x":{"user_count":1,"subscription_count":2},"c":{"subscription_count":1}}}"#
    );
    assert_eq!(trigger_response(users, [("c", counts(1, 0))]), r#"{"channels":{"c":{}}}"#);

    // Reverb's test of the same batch: user_count on a presence channel, subscription_count,
    // then both on a public channel (user_count does not apply there).
    let batch = [
        (users, "presence-test-channel", counts(1, 1)),
        (subs, "test-channel-two", counts(1, 0)),
        (both, "test-channel-three", counts(1, 0)),
    ];
    assert_eq!(
        batch_response(&batch),
        r#"{"batch":[{"user_count":1},{"subscription_count":1},{"subscription_count":1}]}"#
    );
    assert_eq!(batch_response(&[(Info::default(), "c", counts(1, 0))]), "{}");
    assert_eq!(
        batch_response(&[(Info::default(), "c", counts(1, 0)), (subs, "d", counts(0, 0))]),
        r#"{"batch":[{},{"subscription_count":0}]}"#
    );
    assert_eq!(batch_response(&[]), "{}");

    // Occupied channels only.
    assert_eq!(
        channels_response(Info::default(), [("c", counts(1, 0)), ("empty", counts(0, 0))]),
        r#"{"channels":{"c":{}}}"#
    );
    assert_eq!(
        channels_response(users, [("presence-foobar", counts(50, 42)), ("presence-another", counts(123, 123))]),
        r#"{"channels":{"presence-foobar":{"user_count":42},"presence-another":{"user_count":123}}}"#
    );
    assert_eq!(channels_response(subs, []), r#"{"channels":{}}"#);

    assert_eq!(
        channel_response(both, "presence-c", counts(2, 1)),
        r#"{"occupied":true,"user_count":1,"subscription_count":2}"#
    );
    assert_eq!(channel_response(Info::default(), "c", counts(2, 0)), r#"{"occupied":true}"#);
    assert_eq!(channel_response(subs, "c", counts(0, 0)), r#"{"occupied":false,"subscription_count":0}"#);

    let ids = [UserId::string("1"), UserId::number(2), UserId::string("q\"")];
    assert_eq!(users_response(&ids), r#"{"users":[{"id":"1"},{"id":2},{"id":"q\""}]}"#);
    assert_eq!(users_response([]), r#"{"users":[]}"#);
}

// --- Properties -------------------------------------------------------------------------------

/// Percent-encodes every byte outside the unreserved set, as a careful URL library would.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics_the_parsers(bytes in prop::collection::vec(any::<u8>(), 0..300), text in ".{0,200}") {
        let small = Limits { max_event_bytes: 8, max_channels_per_event: 2, max_batch_events: 2, ..limits() };
        for limits in [limits(), small] {
            let _ = parse_trigger(&bytes, &limits);
            let _ = parse_batch(&bytes, &limits);
            let _ = parse_trigger(text.as_bytes(), &limits);
            let _ = parse_batch(text.as_bytes(), &limits);
            for method in ["GET", "POST"] {
                let _ = route(method, &text, &limits);
                let _ = route(method, &format!("/apps/{text}"), &limits);
                let _ = route(method, &format!("/apps/1/channels/{text}"), &limits);
            }
        }
        if let Ok(pairs) = parse_query(&text) {
            prop_assert!(pairs.len() <= MAX_QUERY_PARAMS);
            let _ = parse_channels_query(&pairs);
            let _ = parse_channel_query(&text, &pairs);
        }
        let _ = percent_decode(&text);
    }

    #[test]
    fn queries_round_trip(pairs in prop::collection::vec((".{1,12}", ".{0,12}"), 0..8)) {
        let query = pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&");
        prop_assert_eq!(parse_query(&query), Ok(pairs));
    }

    #[test]
    fn trigger_bodies_round_trip(
        name in "[a-z][a-z0-9_-]{0,30}",
        data in ".{0,100}",
        channels in prop::collection::btree_set("(|private-|presence-)[A-Za-z0-9_=@,.;-]{1,20}", 1..5),
        single in any::<bool>(),
        socket_id in proptest::option::of("[0-9]{1,8}\\.[0-9]{1,8}"),
        user_count in any::<bool>(),
        subscription_count in any::<bool>(),
    ) {
        let channels: Vec<String> = channels.into_iter().collect();
        let channels = if single { channels[..1].to_vec() } else { channels };
        let mut body = json!({"name": name, "data": data});
        if single { body["channel"] = json!(channels[0]); } else { body["channels"] = json!(channels); }
        if let Some(id) = &socket_id { body["socket_id"] = json!(id); }
        let list: Vec<&str> = [(user_count, "user_count"), (subscription_count, "subscription_count")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        body["info"] = json!(list.join(","));
        let expected = Trigger {
            name: name.clone(),
            data: data.clone(),
            channels: channels.clone(),
            socket_id: socket_id.clone(),
            info: Info { user_count, subscription_count },
        };
        prop_assert_eq!(trigger(&body.to_string()), Ok(expected.clone()));
        if single {
            let batch = json!({"batch": [body.clone(), body]}).to_string();
            prop_assert_eq!(parse_batch(batch.as_bytes(), &limits()), Ok(vec![expected.clone(), expected]));
        }
    }

    #[test]
    fn answers_are_json(
        channels in prop::collection::vec((".{0,12}", any::<u64>(), any::<u64>()), 0..6),
        user_count in any::<bool>(),
        subscription_count in any::<bool>(),
    ) {
        let info = Info { user_count, subscription_count };
        let list: Vec<(&str, ChannelCounts)> = channels
            .iter()
            .map(|(c, s, u)| (c.as_str(), ChannelCounts { subscription_count: *s, user_count: *u }))
            .collect();
        let _ = value(&trigger_response(info, list.iter().copied()));
        let _ = value(&channels_response(info, list.iter().copied()));
        let batch: Vec<(Info, &str, ChannelCounts)> = list.iter().map(|&(c, n)| (info, c, n)).collect();
        let _ = value(&batch_response(&batch));
        for &(channel, counts) in &list {
            let answer = value(&channel_response(info, channel, counts));
            prop_assert_eq!(&answer["occupied"], &json!(counts.subscription_count > 0));
        }
        let ids: Vec<UserId> = list.iter().map(|(c, _)| UserId::string(c)).collect();
        let users = value(&users_response(&ids));
        prop_assert_eq!(users["users"].as_array().map(Vec::len), Some(ids.len()));
    }
}
