use super::*;
use proptest::prelude::*;
use serde_json::{Value, json};

fn limits() -> Limits {
    Limits::default()
}

fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
    parse_client_message(text, &limits())
}

fn refused(text: &str) -> ProtocolError {
    match parse(text) {
        Ok(message) => panic!("{text} was accepted as {message:?}"),
        Err(e) => e,
    }
}

fn value(text: &str) -> Value {
    match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => panic!("not JSON ({e}): {text}"),
    }
}

/// A frame's `data` as pusher-js sees it: `JSON.parse`d when it is a string (`protocol.ts`).
fn data_as_pusher_js_sees_it(frame: &str) -> Value {
    match value(frame).get("data") {
        Some(Value::String(text)) => value(text),
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

fn raw(text: &str) -> Box<RawValue> {
    match RawValue::from_string(text.to_owned()) {
        Ok(raw) => raw,
        Err(e) => panic!("not JSON ({e}): {text}"),
    }
}

fn member(id: UserId, info: Option<&str>) -> PresenceMember {
    PresenceMember { user_id: id, user_info: info.map(raw) }
}

// --- Parsing what clients send ---------------------------------------------------------------

#[test]
fn pusher_js_public_subscribe() {
    // pusher-js 8 sends `{auth: data.auth, channel_data: data.channel_data, channel}`, with
    // `auth: ""` for a public channel and channel_data undefined (so absent).
    let text = r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#;
    match parse(text) {
        Ok(ClientMessage::Subscribe { channel, auth, channel_data }) => {
            assert_eq!(channel, "my-channel");
            assert_eq!(auth.as_deref(), Some(""));
            assert_eq!(channel_data, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn presence_subscribe_of_the_reference() {
    let text = r#"{"event":"pusher:subscribe","data":{"channel":"presence-c","auth":"key:hex","channel_data":"{\"user_id\":\"1\",\"user_info\":{\"name\":\"A\"}}"}}"#;
    match parse(text) {
        Ok(ClientMessage::Subscribe { channel, auth, channel_data }) => {
            assert_eq!(channel, "presence-c");
            assert_eq!(auth.as_deref(), Some("key:hex"));
            // Kept as the exact text the signature covers.
            assert_eq!(channel_data.as_deref(), Some(r#"{"user_id":"1","user_info":{"name":"A"}}"#));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn data_may_be_a_json_encoded_object() {
    let text = r#"{"event":"pusher:subscribe","data":"{\"channel\":\"private-x\",\"auth\":\"k:s\"}"}"#;
    match parse(text) {
        Ok(ClientMessage::Subscribe { channel, auth, channel_data: None }) => {
            assert_eq!((channel.as_str(), auth.as_deref()), ("private-x", Some("k:s")));
        }
        other => panic!("{other:?}"),
    }
    let text = r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"c\"}"}"#;
    assert!(matches!(parse(text), Ok(ClientMessage::Unsubscribe { channel }) if channel == "c"));
}

#[test]
fn unsubscribe_ping_pong_and_signin() {
    let text = r#"{"event":"pusher:unsubscribe","data":{"channel":"c"}}"#;
    assert!(matches!(parse(text), Ok(ClientMessage::Unsubscribe { channel }) if channel == "c"));
    // pusher-js sends `{"event":"pusher:ping","data":{}}`; the protocol text shows no data.
    for text in
        [r#"{"event":"pusher:ping","data":{}}"#, r#"{"event":"pusher:ping"}"#, r#"{"data":7,"event":"pusher:ping"}"#]
    {
        assert!(matches!(parse(text), Ok(ClientMessage::Ping)), "{text}");
    }
    assert!(matches!(parse(r#"{"event":"pusher:pong","data":{}}"#), Ok(ClientMessage::Pong)));
    let text = r#"{"event":"pusher:signin","data":{"auth":"key:hex","user_data":"{\"id\":\"1\"}"}}"#;
    match parse(text) {
        Ok(ClientMessage::Signin { auth, user_data }) => {
            assert_eq!((auth.as_str(), user_data.as_str()), ("key:hex", r#"{"id":"1"}"#));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_events_keep_their_data_byte_for_byte() {
    // pusher-js's order is event, data, channel.
    let cases = [
        (r#"{"event":"client-typing","data":{"x":1},"channel":"private-c"}"#, Some(r#"{"x":1}"#)),
        (
            r#"{"event":"client-typing","channel":"private-c","data": { "a" : [1, 2.50] } }"#,
            Some(r#"{ "a" : [1, 2.50] }"#),
        ),
        (r#"{"event":"client-typing","channel":"private-c","data":"just a string"}"#, Some(r#""just a string""#)),
        (r#"{"event":"client-typing","channel":"private-c","data":"{\"x\":1}"}"#, Some(r#""{\"x\":1}""#)),
        (r#"{"event":"client-typing","channel":"private-c","data":12}"#, Some("12")),
        (r#"{"event":"client-typing","channel":"private-c","data":null}"#, Some("null")),
        (r#"{"event":"client-typing","channel":"private-c"}"#, None),
    ];
    for (text, expected) in cases {
        match parse(text) {
            Ok(ClientMessage::ClientEvent { event, channel, data }) => {
                assert_eq!((event.as_str(), channel.as_str()), ("client-typing", "private-c"));
                assert_eq!(data.as_deref().map(RawValue::get), expected, "{text}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let text = r#"{"event":"pusher:subscribe","extra":[1],"data":{"channel":"c","x":{"y":null}},"channel":"ignored"}"#;
    assert!(matches!(parse(text), Ok(ClientMessage::Subscribe { channel, .. }) if channel == "c"));
}

#[test]
fn unknown_protocol_events_are_their_own_variant() {
    for event in ["pusher:foo", "pusher:", "pusher_internal:member_added", "pusher:cache_miss"] {
        let text = format!(r#"{{"event":"{event}","data":{{}}}}"#);
        match parse(&text) {
            Ok(ClientMessage::UnknownProtocolEvent { event: got }) => assert_eq!(got, event),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn what_is_not_a_json_object() {
    for text in ["", "nope", "{", "{\"event\":\"pusher:ping\"", "{\"event\":\"pusher:ping\"}x"] {
        assert!(matches!(refused(text), ProtocolError::NotAnObject(ObjectError::Syntax(_))), "{text:?}");
    }
    for text in ["[]", "\"pusher:ping\"", "1", "null"] {
        assert_eq!(refused(text), ProtocolError::NotAnObject(ObjectError::NotAnObject), "{text}");
    }
    let twice = r#"{"event":"pusher:ping","event":"pusher:subscribe"}"#;
    assert_eq!(refused(twice), ProtocolError::NotAnObject(ObjectError::Duplicate("event")));
    assert_eq!(refused(twice).to_string(), "message field `event` appears more than once");
    assert!(refused("[]").to_string().contains("must be a JSON object"));
}

#[test]
fn event_must_be_a_string_within_the_limit() {
    for text in [r#"{}"#, r#"{"event":null}"#, r#"{"event":1}"#, r#"{"event":{"a":1}}"#, r#"{"data":{}}"#] {
        assert_eq!(refused(text), ProtocolError::NoEvent, "{text}");
    }
    assert_eq!(refused(r#"{"event":""}"#), ProtocolError::BadEventName(NameError::Empty { what: "event name" }));
    let long = format!(r#"{{"event":"client-{}","channel":"private-c"}}"#, "x".repeat(200));
    let e = refused(&long);
    assert_eq!(e, ProtocolError::BadEventName(NameError::TooLong { what: "event name", len: 207, max: 200 }));
    assert_eq!(e.to_string(), "event name is 207 bytes long (at most 200)");
    // The limit is the configured one.
    let small = Limits { max_event_name_bytes: 11, ..limits() };
    assert!(parse_client_message(r#"{"event":"pusher:ping"}"#, &small).is_ok());
    let too_long = parse_client_message(r#"{"event":"client-12345","channel":"private-c"}"#, &small);
    assert!(matches!(too_long, Err(ProtocolError::BadEventName(NameError::TooLong { len: 12, .. }))));
}

#[test]
fn pusher_events_need_an_object_as_data() {
    let cases = [
        (r#"{"event":"pusher:subscribe"}"#, "pusher:subscribe", "is missing"),
        (r#"{"event":"pusher:subscribe","data":null}"#, "pusher:subscribe", "is missing"),
        (r#"{"event":"pusher:subscribe","data":1}"#, "pusher:subscribe", "must be an object"),
        (r#"{"event":"pusher:unsubscribe","data":["c"]}"#, "pusher:unsubscribe", "must be an object"),
        (r#"{"event":"pusher:signin","data":true}"#, "pusher:signin", "must be an object"),
        (
            r#"{"event":"pusher:subscribe","data":"[1]"}"#,
            "pusher:subscribe",
            "must be an object or a JSON-encoded object",
        ),
        (r#"{"event":"pusher:subscribe","data":"c"}"#, "pusher:subscribe", "invalid JSON"),
        (r#"{"event":"pusher:subscribe","data":""}"#, "pusher:subscribe", "invalid JSON"),
    ];
    for (text, event, problem) in cases {
        match refused(text) {
            ProtocolError::BadData { event: got, problem: said } => {
                assert_eq!(got, event, "{text}");
                assert!(said.starts_with(problem), "{text}: {said}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    let e = refused(r#"{"event":"pusher:subscribe","data":{"channel":"a","channel":"b"}}"#);
    assert!(
        matches!(&e, ProtocolError::BadData { problem, .. } if problem.contains("`channel` appears more than once"))
    );
    assert_eq!(
        refused(r#"{"event":"pusher:subscribe","data":1}"#).to_string(),
        "pusher:subscribe: `data` must be an object"
    );
}

#[test]
fn fields_must_be_there_and_of_their_type() {
    let cases = [
        (r#"{"event":"pusher:subscribe","data":{}}"#, ProtocolError::MissingField("data.channel")),
        (r#"{"event":"pusher:subscribe","data":{"channel":null}}"#, ProtocolError::MissingField("data.channel")),
        (r#"{"event":"pusher:unsubscribe","data":{"auth":""}}"#, ProtocolError::MissingField("data.channel")),
        (
            r#"{"event":"pusher:subscribe","data":{"channel":7}}"#,
            ProtocolError::WrongType { field: "data.channel", expected: "a string" },
        ),
        (
            r#"{"event":"pusher:subscribe","data":{"channel":"c","auth":1}}"#,
            ProtocolError::WrongType { field: "data.auth", expected: "a string" },
        ),
        (
            // pusher-js forwards channel_data as the auth endpoint's string; an object would
            // have no exact text to check the signature over.
            r#"{"event":"pusher:subscribe","data":{"channel":"presence-c","auth":"k:s","channel_data":{"user_id":1}}}"#,
            ProtocolError::WrongType { field: "data.channel_data", expected: "a string" },
        ),
        (r#"{"event":"pusher:signin","data":{"user_data":"{}"}}"#, ProtocolError::MissingField("data.auth")),
        (r#"{"event":"pusher:signin","data":{"auth":"k:s"}}"#, ProtocolError::MissingField("data.user_data")),
        (
            r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":{"id":"1"}}}"#,
            ProtocolError::WrongType { field: "data.user_data", expected: "a string" },
        ),
        (r#"{"event":"client-x","data":{}}"#, ProtocolError::MissingField("channel")),
        (r#"{"event":"client-x","channel":null}"#, ProtocolError::MissingField("channel")),
        (
            r#"{"event":"client-x","channel":["private-c"]}"#,
            ProtocolError::WrongType { field: "channel", expected: "a string" },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(refused(text), expected, "{text}");
    }
    // Optional strings may be null.
    let text = r#"{"event":"pusher:subscribe","data":{"channel":"c","auth":null,"channel_data":null}}"#;
    assert!(matches!(parse(text), Ok(ClientMessage::Subscribe { auth: None, channel_data: None, .. })));
    assert_eq!(ProtocolError::MissingField("data.channel").to_string(), "missing field `data.channel`");
    assert_eq!(
        ProtocolError::WrongType { field: "data.auth", expected: "a string" }.to_string(),
        "field `data.auth` must be a string"
    );
}

#[test]
fn channel_names_follow_the_rules_and_the_configured_limit() {
    let e = refused(r#"{"event":"pusher:subscribe","data":{"channel":"a b"}}"#);
    assert_eq!(e, ProtocolError::BadChannel { name: "a b".to_owned(), error: NameError::BadChar { ch: ' ', at: 1 } });
    assert!(e.to_string().starts_with("bad channel \"a b\": channel name has ' ' at byte 1"));
    assert_eq!(e.channel(), None);
    let e = refused(r#"{"event":"client-x","channel":"private-#"}"#);
    assert!(matches!(e, ProtocolError::BadChannel { error: NameError::BadChar { ch: '#', at: 8 }, .. }));
    let e = refused(r#"{"event":"pusher:unsubscribe","data":{"channel":""}}"#);
    assert!(matches!(e, ProtocolError::BadChannel { error: NameError::Empty { .. }, .. }));
    // A long name is clipped in the error, and measured against the configured limit.
    let long = "x".repeat(1000);
    let e = refused(&format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{long}"}}}}"#));
    match &e {
        ProtocolError::BadChannel { name, error: NameError::TooLong { len: 1000, max: 200, .. } } => {
            assert!(name.len() < 100, "{name}");
        }
        other => panic!("{other:?}"),
    }
    let tight = Limits { max_channel_name_bytes: 3, ..limits() };
    let text = r#"{"event":"pusher:subscribe","data":{"channel":"abcd"}}"#;
    assert!(matches!(parse_client_message(text, &tight), Err(ProtocolError::BadChannel { .. })));
    assert!(parse_client_message(r#"{"event":"pusher:subscribe","data":{"channel":"abc"}}"#, &tight).is_ok());
    // #server-to-user- channels are names like any other here.
    let text = r##"{"event":"pusher:subscribe","data":{"channel":"#server-to-user-42"}}"##;
    assert!(matches!(parse(text), Ok(ClientMessage::Subscribe { channel, .. }) if channel == "#server-to-user-42"));
}

#[test]
fn client_event_data_is_limited_by_max_event_bytes() {
    let small = Limits { max_event_bytes: 10, ..limits() };
    // Measured as JSON text, as relayed: `"12345678"` is 10 bytes.
    let at_limit = r#"{"event":"client-x","channel":"private-c","data":"12345678"}"#;
    assert!(matches!(parse_client_message(at_limit, &small), Ok(ClientMessage::ClientEvent { .. })));
    let over = r#"{"event":"client-x","channel":"private-c","data":"123456789"}"#;
    let e = parse_client_message(over, &small).map(|_| ()).expect_err("over the limit");
    assert_eq!(e, ProtocolError::TooBig { channel: "private-c".to_owned(), len: 11, max: 10 });
    assert_eq!(e.channel(), Some("private-c"));
    assert_eq!(e.to_string(), "client event data is 11 bytes (at most 10)");
    // pusher:* data is not a client event's: the limit does not apply to it.
    let subscribe =
        r#"{"event":"pusher:subscribe","data":{"channel":"presence-c","channel_data":"{\"user_id\":\"1234567890\"}"}}"#;
    assert!(parse_client_message(subscribe, &small).is_ok());
}

#[test]
fn other_events_are_not_client_events() {
    let e = refused(r#"{"event":"my-event","channel":"private-c","data":{}}"#);
    assert_eq!(
        e,
        ProtocolError::NotClientEvent { event: "my-event".to_owned(), channel: Some("private-c".to_owned()) }
    );
    assert_eq!(e.channel(), Some("private-c"));
    assert_eq!(e.to_string(), "event \"my-event\" refused: clients may send only pusher:* and client-* events");
    // Without a valid channel there is none to report it on.
    for text in [r#"{"event":"Client-x","channel":"a b"}"#, r#"{"event":"x"}"#, r#"{"event":"x","channel":1}"#] {
        assert!(matches!(refused(text), ProtocolError::NotClientEvent { channel: None, .. }), "{text}");
    }
}

#[test]
fn errors_quote_client_text_escaped_and_short() {
    let e = refused(&format!(r#"{{"event":"my\"event{}"}}"#, "y".repeat(150)));
    let text = e.to_string();
    assert!(text.starts_with(r#"event "my\"event"#), "{text}");
    assert!(text.len() < 300, "{text}");
}

// --- channel_data -----------------------------------------------------------------------------

#[test]
fn channel_data_with_a_string_or_numeric_user_id() {
    // The presence test vector's channel_data (Pusher's auth-signatures doc).
    let Ok(m) = parse_channel_data(r#"{"user_id":"10","user_info":{"name":"Mr. Channels"}}"#, 2048) else {
        panic!("valid channel_data")
    };
    assert_eq!((m.user_id.as_str(), m.user_id.is_numeric()), ("10", false));
    assert_eq!(m.user_info.as_deref().map(RawValue::get), Some(r#"{"name":"Mr. Channels"}"#));
    // Laravel sends numeric ids: one user with "10", echoed as a number.
    let Ok(n) = parse_channel_data(r#"{"user_id":10}"#, 2048) else { panic!("valid channel_data") };
    assert_eq!((n.user_id.as_str(), n.user_id.is_numeric(), n.user_info.is_none()), ("10", true, true));
    assert_eq!(m.user_id, n.user_id);
    // user_info may be any JSON, kept as written; null is none.
    for (info, kept) in [("[1, 2]", Some("[1, 2]")), ("\"x\"", Some("\"x\"")), ("0", Some("0")), ("null", None)] {
        let text = format!(r#"{{"user_info":{info},"user_id":"u"}}"#);
        let Ok(m) = parse_channel_data(&text, 2048) else { panic!("{text}") };
        assert_eq!(m.user_info.as_deref().map(RawValue::get), kept, "{text}");
    }
    // Unknown fields are ignored; extremes of the numeric range are accepted.
    for (text, id) in [
        (r#"{"user_id":"a","extra":{}}"#, "a"),
        (r#"{"user_id":-9007199254740991}"#, "-9007199254740991"),
        (r#"{"user_id":9007199254740991}"#, "9007199254740991"),
        (r#"{"user_id":0}"#, "0"),
        (r#"{"user_id":-0}"#, "0"),
        (r#"{"user_id":"\u00e9"}"#, "é"),
    ] {
        assert_eq!(parse_channel_data(text, 2048).map(|m| m.user_id.as_str().to_owned()), Ok(id.to_owned()), "{text}");
    }
}

#[test]
fn channel_data_refusals() {
    let parse = |text: &str| parse_channel_data(text, 16).map(|m| m.user_id.as_str().to_owned());
    assert!(matches!(parse("nope"), Err(PresenceError::NotAnObject(ObjectError::Syntax(_)))));
    assert_eq!(parse("[]"), Err(PresenceError::NotAnObject(ObjectError::NotAnObject)));
    assert_eq!(
        parse(r#"{"user_id":"1","user_id":"2"}"#),
        Err(PresenceError::NotAnObject(ObjectError::Duplicate("user_id")))
    );
    assert_eq!(parse("{}"), Err(PresenceError::MissingUserId));
    assert_eq!(parse(r#"{"user_id":null}"#), Err(PresenceError::MissingUserId));
    for id in [
        r#""""#,
        "1.5",
        "1e3",
        "1.0",
        "true",
        "{}",
        "[1]",
        "9007199254740992",
        "-9007199254740992",
        "99999999999999999999",
    ] {
        assert_eq!(parse(&format!(r#"{{"user_id":{id}}}"#)), Err(PresenceError::InvalidUserId), "{id}");
    }
    let long = "u".repeat(MAX_USER_ID_BYTES + 1);
    assert_eq!(parse(&format!(r#"{{"user_id":"{long}"}}"#)), Err(PresenceError::UserIdTooLong { len: 129 }));
    assert!(parse(&format!(r#"{{"user_id":"{}"}}"#, &long[1..])).is_ok());
    // user_info over the limit, measured as JSON text: `"12345678901234"` is 16 bytes.
    assert!(parse(r#"{"user_id":"1","user_info":"12345678901234"}"#).is_ok());
    assert_eq!(
        parse(r#"{"user_id":"1","user_info":"123456789012345"}"#),
        Err(PresenceError::UserInfoTooBig { len: 17, max: 16 })
    );
    assert_eq!(
        PresenceError::UserInfoTooBig { len: 17, max: 16 }.to_string(),
        "channel_data `user_info` is 17 bytes of JSON (at most 16)"
    );
    assert!(PresenceError::InvalidUserId.to_string().contains("non-empty string or a whole number"));
}

#[test]
fn user_ids_compare_as_strings() {
    use std::collections::HashSet;
    let ids: HashSet<UserId> = [UserId::string("7"), UserId::number(7), UserId::string("07")].into_iter().collect();
    assert_eq!(ids.len(), 2);
    // Ordered as strings too, so "10" sorts before "9".
    assert!(UserId::number(10) < UserId::number(9));
}

// --- Connect URL ------------------------------------------------------------------------------

#[test]
fn connect_urls() {
    let ok = |target: &str| parse_connect_url(target).map(|r| (r.key.to_owned(), r.protocol));
    // pusher-js (`url_schemes.ts`), pusher-websocket-swift and pusher-websocket-java.
    assert_eq!(ok("/app/app-key?protocol=7&client=js&version=8.6.0&flash=false"), Ok(("app-key".to_owned(), 7)));
    assert_eq!(ok("/app/k?client=pusher-websocket-swift&version=10.1.5&protocol=7"), Ok(("k".to_owned(), 7)));
    assert_eq!(ok("/app/k?client=java-client&protocol=5&version=2.4.4"), Ok(("k".to_owned(), 5)));
    assert_eq!(ok("/app/k?protocol=6"), Ok(("k".to_owned(), 6)));
    // Percent-encoded name or value, and the first `protocol` wins.
    assert_eq!(ok("/app/k?%70rotocol=%37"), Ok(("k".to_owned(), 7)));
    assert_eq!(ok("/app/k?protocol=7&protocol=1"), Ok(("k".to_owned(), 7)));
    assert_eq!(ok("/app/k?x=%zz&protocol=7"), Ok(("k".to_owned(), 7)));

    for target in ["/app/k", "/app/k?", "/app/k?client=js", "/app/k?protocol=", "/app/k?protocol", "/app/k?protocols=7"]
    {
        assert_eq!(ok(target), Err(ConnectError::NoProtocol), "{target}");
    }
    for (target, given) in [
        ("/app/k?protocol=4", "4"),
        ("/app/k?protocol=8", "8"),
        ("/app/k?protocol=1", "1"),
        ("/app/k?protocol=seven", "seven"),
        ("/app/k?protocol=%zz", "%zz"),
        ("/app/k?protocol=+7", "+7"),
        ("/app/k?protocol=7.0", "7.0"),
        ("/app/k?protocol=0007", "0007"),
        ("/app/k?protocol=256", "256"),
    ] {
        assert_eq!(ok(target), Err(ConnectError::UnsupportedProtocol(given.to_owned())), "{target}");
    }
    for target in ["/", "/app", "/app/", "/app/?protocol=7", "/apps/k?protocol=7", "/app/k/x?protocol=7", "app/k"] {
        assert_eq!(ok(target), Err(ConnectError::PathNotFound), "{target}");
    }
    assert_eq!(ConnectError::PathNotFound.code(), 4005);
    assert_eq!(ConnectError::NoProtocol.code(), 4008);
    assert_eq!(ConnectError::UnsupportedProtocol("8".to_owned()).code(), 4007);
    assert_eq!(ConnectError::NoProtocol.to_string(), "no protocol version supplied (add ?protocol=7)");
    assert_eq!(
        ConnectError::UnsupportedProtocol("8".to_owned()).to_string(),
        "unsupported protocol version \"8\": 5 to 7 are supported"
    );
}

#[test]
fn close_codes_are_the_protocols() {
    use close_code::*;
    let codes = [
        UNKNOWN_APP,
        APP_DISABLED,
        OVER_QUOTA,
        PATH_NOT_FOUND,
        UNSUPPORTED_PROTOCOL,
        NO_PROTOCOL,
        UNAUTHORIZED,
        OVER_CAPACITY,
        RECONNECT,
        PONG_NOT_RECEIVED,
        CLIENT_EVENT_REJECTED,
    ];
    assert_eq!(codes, [4001, 4003, 4004, 4005, 4007, 4008, 4009, 4100, 4200, 4201, 4301]);
}

// --- Encoding what the server sends -----------------------------------------------------------

#[test]
fn frames_match_the_reference_exactly() {
    let cases = [
        (
            connection_established("123.456", 120),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#,
        ),
        (
            subscription_succeeded("c", None),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#,
        ),
        (error(Some(4001), "…", None), r#"{"event":"pusher:error","data":{"message":"…","code":4001}}"#),
        (pong(), r#"{"event":"pusher:pong","data":{}}"#),
        (ping(), r#"{"event":"pusher:ping","data":{}}"#),
        (
            subscription_count("c", 3),
            r#"{"event":"pusher_internal:subscription_count","channel":"c","data":"{\"subscription_count\":3}"}"#,
        ),
        (
            member_removed("c", &UserId::string("2")),
            r#"{"event":"pusher_internal:member_removed","channel":"c","data":"{\"user_id\":\"2\"}"}"#,
        ),
        (
            member_added("c", &UserId::string("2"), Some(&raw(r#"{"name":"B"}"#))),
            r#"{"event":"pusher_internal:member_added","channel":"c","data":"{\"user_id\":\"2\",\"user_info\":{\"name\":\"B\"}}"}"#,
        ),
        (
            event("c", "e", "<string exactly as POSTed>"),
            r#"{"event":"e","channel":"c","data":"<string exactly as POSTed>"}"#,
        ),
        (cache_miss("cache-x"), r#"{"event":"pusher:cache_miss","channel":"cache-x"}"#),
        (signin_success("…"), r#"{"event":"pusher:signin_success","data":{"user_data":"…"}}"#),
        (
            subscription_error("private-c", "AuthError", "bad", 401),
            r#"{"event":"pusher:subscription_error","channel":"private-c","data":{"type":"AuthError","error":"bad","status":401}}"#,
        ),
    ];
    for (got, expected) in cases {
        assert_eq!(got, expected);
    }
}

#[test]
fn data_strings_parse_as_pusher_js_parses_them() {
    let established = data_as_pusher_js_sees_it(&connection_established("1.2", 30));
    assert_eq!(established, json!({"socket_id": "1.2", "activity_timeout": 30}));
    assert_eq!(data_as_pusher_js_sees_it(&subscription_succeeded("c", None)), json!({}));
    assert_eq!(data_as_pusher_js_sees_it(&subscription_count("c", 0)), json!({"subscription_count": 0}));
    let added = member_added("presence-c", &UserId::number(7), Some(&raw(r#"{"n":[1,"\"q\""]}"#)));
    assert_eq!(data_as_pusher_js_sees_it(&added), json!({"user_id": 7, "user_info": {"n": [1, "\"q\""]}}));
    // No user_info: none is sent (pusher-js stores undefined).
    let added = member_added("presence-c", &UserId::string("u"), None);
    assert_eq!(data_as_pusher_js_sees_it(&added), json!({"user_id": "u"}));
    assert_eq!(data_as_pusher_js_sees_it(&member_removed("presence-c", &UserId::number(-3))), json!({"user_id": -3}));
    // An event's data string is delivered as the string; pusher-js parses it if it can.
    let frame = event("c", "e", r#"{"some":"data"}"#);
    assert_eq!(value(&frame)["data"], json!(r#"{"some":"data"}"#));
    assert_eq!(data_as_pusher_js_sees_it(&frame), json!({"some": "data"}));
}

#[test]
fn presence_subscription_succeeded() {
    let members = [
        member(UserId::string("1"), Some(r#"{"name":"A"}"#)),
        member(UserId::number(2), None),
        // A second connection of user 1 (even typed differently) is the same user.
        member(UserId::number(1), Some(r#"{"name":"other"}"#)),
    ];
    let presence = PresenceData::new(&members);
    assert_eq!(presence.count(), 2);
    let frame = subscription_succeeded("presence-c", Some(&presence));
    assert_eq!(
        frame,
        r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-c","data":"{\"presence\":{\"ids\":[\"1\",\"2\"],\"hash\":{\"1\":{\"name\":\"A\"},\"2\":null},\"count\":2}}"}"#
    );
    assert_eq!(
        data_as_pusher_js_sees_it(&frame),
        json!({"presence": {"ids": ["1", "2"], "hash": {"1": {"name": "A"}, "2": null}, "count": 2}})
    );
    let empty = PresenceData::new([]);
    assert_eq!(
        data_as_pusher_js_sees_it(&subscription_succeeded("presence-c", Some(&empty))),
        json!({"presence": {"ids": [], "hash": {}, "count": 0}})
    );
}

#[test]
fn error_frames() {
    // Pusher's own error for a bad signature carries `"code":null`.
    assert_eq!(
        error(None, "Invalid signature", None),
        r#"{"event":"pusher:error","data":{"message":"Invalid signature","code":null}}"#
    );
    // With a channel (soketi's 4301 shape), so pusher-js emits it on the channel.
    let frame = error(Some(close_code::CLIENT_EVENT_REJECTED), "rate \"limit\"\n", Some("private-c"));
    assert_eq!(
        frame,
        r#"{"event":"pusher:error","channel":"private-c","data":{"message":"rate \"limit\"\n","code":4301}}"#
    );
    assert_eq!(value(&frame)["data"]["message"], json!("rate \"limit\"\n"));
}

#[test]
fn relayed_client_events() {
    let data = raw(r#"{ "x" : 1 }"#);
    let frame = client_event_relay("client-typing", "private-c", Some(&data), None);
    assert_eq!(frame, r#"{"event":"client-typing","channel":"private-c","data":{ "x" : 1 }}"#);
    let frame = client_event_relay("client-typing", "presence-c", Some(&raw("\"hi\"")), Some(&UserId::number(5)));
    assert_eq!(frame, r#"{"event":"client-typing","channel":"presence-c","data":"hi","user_id":5}"#);
    let frame = client_event_relay("client-typing", "presence-c", None, Some(&UserId::string("u\"1")));
    assert_eq!(frame, r#"{"event":"client-typing","channel":"presence-c","user_id":"u\"1"}"#);
}

#[test]
fn the_fan_out_frame_is_one_exact_allocation() {
    let data = format!("{{\"text\":\"{}\\n\u{1}\"}}", "a".repeat(500));
    let frame = event("private-c", "my-event", &data);
    // `String::with_capacity` asks for exactly the final length.
    assert_eq!(frame.capacity(), frame.len());
    assert_eq!(value(&frame)["data"], json!(data));
}

// --- Properties -------------------------------------------------------------------------------

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid user id of either type.
fn any_user_id() -> impl Strategy<Value = UserId> {
    prop_oneof![
        "[^\u{0}]{1,30}".prop_map(|s| UserId::string(&s)),
        (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).prop_map(UserId::number),
    ]
}

/// Text that looks like a client message often enough to reach the deeper paths.
fn message_like() -> impl Strategy<Value = String> {
    let event = prop_oneof![
        Just("pusher:subscribe".to_owned()),
        Just("pusher:unsubscribe".to_owned()),
        Just("pusher:signin".to_owned()),
        Just("pusher:ping".to_owned()),
        "client-.{0,10}",
        ".{0,10}",
    ];
    (event, any_json(), any_json(), proptest::option::of(".{0,12}")).prop_map(|(event, data, inner, channel)| {
        let data = match data {
            Value::Object(mut map) => {
                map.insert("channel".to_owned(), inner);
                Value::Object(map)
            }
            other => other,
        };
        let mut message = json!({"event": event, "data": data});
        if let Some(channel) = channel {
            message["channel"] = Value::String(channel);
        }
        message.to_string()
    })
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics_the_parsers(text in ".{0,300}", max in 0usize..300) {
        let small = Limits { max_event_bytes: max, max_event_name_bytes: max, max_channel_name_bytes: max, ..limits() };
        if let Err(e) = parse_client_message(&text, &small) {
            prop_assert!(e.to_string().len() < 400 + text.len().min(200));
        }
        let _ = parse_client_message(&text, &limits());
        let _ = parse_channel_data(&text, max);
        let _ = parse_connect_url(&text);
        let _ = parse_connect_url(&format!("/app/k?protocol={text}"));
    }

    #[test]
    fn message_like_text_never_panics_and_what_parses_is_valid(text in message_like()) {
        match parse(&text) {
            Ok(ClientMessage::Subscribe { channel, .. } | ClientMessage::Unsubscribe { channel }) => {
                prop_assert!(names::validate_channel_name(&channel, 200).is_ok());
            }
            Ok(ClientMessage::ClientEvent { event, channel, data }) => {
                prop_assert!(names::is_client_event(&event) && event.len() <= 200);
                prop_assert!(names::validate_channel_name(&channel, 200).is_ok());
                prop_assert!(data.is_none_or(|d| d.get().len() <= limits().max_event_bytes));
            }
            Ok(_) | Err(_) => {}
        }
    }

    #[test]
    fn relay_then_parse_round_trips(
        name in "[a-z_-]{0,30}",
        channel in "(private|presence)-[A-Za-z0-9_=@,.;-]{1,30}",
        data in proptest::option::of(any_json()),
        user_id in proptest::option::of(any_user_id()),
    ) {
        let event = format!("client-{name}");
        let data = data.map(|d| raw(&d.to_string()));
        let frame = client_event_relay(&event, &channel, data.as_deref(), user_id.as_ref());
        prop_assert_eq!(frame.capacity(), frame.len());
        match parse(&frame) {
            Ok(ClientMessage::ClientEvent { event: e, channel: c, data: d }) => {
                prop_assert_eq!(e, event);
                prop_assert_eq!(c, channel);
                prop_assert_eq!(d.as_deref().map(RawValue::get), data.as_deref().map(RawValue::get));
            }
            other => prop_assert!(false, "{:?}", other),
        }
        if let Some(id) = user_id {
            let expected = if id.is_numeric() { json!(id.as_str().parse::<i64>().unwrap_or_default()) } else { json!(id.as_str()) };
            prop_assert_eq!(&value(&frame)["user_id"], &expected);
        }
    }

    #[test]
    fn subscribe_round_trips_as_object_or_string(
        channel in "[A-Za-z0-9_=@,.;-]{1,40}",
        auth in proptest::option::of(".{0,80}"),
        channel_data in proptest::option::of(".{0,80}"),
        encoded in any::<bool>(),
    ) {
        let mut data = json!({"channel": channel});
        if let Some(auth) = &auth { data["auth"] = json!(auth); }
        if let Some(cd) = &channel_data { data["channel_data"] = json!(cd); }
        let data = if encoded { Value::String(data.to_string()) } else { data };
        let text = json!({"event": "pusher:subscribe", "data": data}).to_string();
        match parse(&text) {
            Ok(ClientMessage::Subscribe { channel: c, auth: a, channel_data: d }) => {
                prop_assert_eq!(c, channel);
                prop_assert_eq!(a, auth);
                prop_assert_eq!(d, channel_data);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn channel_data_round_trips_through_member_added(user_id in any_user_id(), info in proptest::option::of(any_json())) {
        let info = info.filter(|i| !i.is_null());
        let id_json = if user_id.is_numeric() { json!(user_id.as_str().parse::<i64>().unwrap_or_default()) } else { json!(user_id.as_str()) };
        let mut channel_data = json!({"user_id": id_json});
        if let Some(info) = &info { channel_data["user_info"] = info.clone(); }
        let member = parse_channel_data(&channel_data.to_string(), 1 << 20);
        let Ok(member) = member else { return Err(TestCaseError::fail(format!("{member:?}"))) };
        prop_assert_eq!(&member.user_id, &user_id);
        prop_assert_eq!(member.user_id.is_numeric(), user_id.is_numeric());
        // user_info is kept as written (compared as text: serde_json's float parsing is not
        // exact, so the same text is compared after one parse each).
        let written = info.map(|i| i.to_string());
        prop_assert_eq!(member.user_info.as_deref().map(RawValue::get), written.as_deref());
        let frame = member_added("presence-c", &member.user_id, member.user_info.as_deref());
        prop_assert_eq!(data_as_pusher_js_sees_it(&frame), value(&channel_data.to_string()));
        let removed = member_removed("presence-c", &member.user_id);
        prop_assert_eq!(&data_as_pusher_js_sees_it(&removed)["user_id"], &id_json);
    }

    #[test]
    fn presence_data_lists_each_user_once(ids in prop::collection::vec(0u8..6, 0..12)) {
        let members: Vec<PresenceMember> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let user_id = if i % 2 == 0 { UserId::number(i64::from(id)) } else { UserId::string(&id.to_string()) };
                member(user_id, Some(&i.to_string()))
            })
            .collect();
        let presence = PresenceData::new(&members);
        let data = data_as_pusher_js_sees_it(&subscription_succeeded("presence-c", Some(&presence)));
        let mut distinct: Vec<String> = Vec::new();
        for id in &ids {
            if !distinct.contains(&id.to_string()) { distinct.push(id.to_string()); }
        }
        prop_assert_eq!(&data["presence"]["ids"], &json!(distinct));
        prop_assert_eq!(&data["presence"]["count"], &json!(distinct.len()));
        // Each user's info is its first connection's.
        for id in &distinct {
            let first = ids.iter().position(|i| i.to_string() == *id).unwrap_or_default();
            prop_assert_eq!(&data["presence"]["hash"][id], &json!(first));
        }
    }

    #[test]
    fn every_frame_is_json_with_what_went_in(channel in ".{0,30}", name in ".{0,30}", text in ".{0,200}", n in any::<u64>()) {
        let frame = event(&channel, &name, &text);
        prop_assert_eq!(frame.capacity(), frame.len());
        prop_assert_eq!(value(&frame), json!({"event": name, "channel": channel, "data": text}));
        prop_assert_eq!(&value(&error(Some(4301), &text, Some(&channel)))["data"]["message"], &json!(text));
        prop_assert_eq!(&value(&signin_success(&text))["data"]["user_data"], &json!(text));
        prop_assert_eq!(data_as_pusher_js_sees_it(&connection_established(&text, n)), json!({"socket_id": text, "activity_timeout": n}));
        prop_assert_eq!(data_as_pusher_js_sees_it(&subscription_count(&channel, n)), json!({"subscription_count": n}));
        let e = value(&subscription_error(&channel, &name, &text, 401));
        prop_assert_eq!(&e["data"], &json!({"type": name, "error": text, "status": 401}));
        prop_assert_eq!(value(&cache_miss(&channel)), json!({"event": "pusher:cache_miss", "channel": channel}));
    }

    #[test]
    fn connect_urls_round_trip(key in "[A-Za-z0-9_.-]{1,30}", protocol in 0u16..300, client in "[a-z-]{0,10}") {
        let target = format!("/app/{key}?client={client}&protocol={protocol}&version=1.0");
        let parsed = parse_connect_url(&target);
        if (5..=7).contains(&protocol) {
            prop_assert_eq!(parsed, Ok(ConnectRequest { key: &key, protocol: u8::try_from(protocol).unwrap_or_default() }));
        } else {
            prop_assert_eq!(parsed, Err(ConnectError::UnsupportedProtocol(protocol.to_string())));
        }
    }
}
