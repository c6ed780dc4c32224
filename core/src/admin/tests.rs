use super::*;

fn admin(password: &str, token: &str) -> AdminConfig {
    AdminConfig { enabled: true, password: password.to_owned(), token: token.to_owned(), path: "/admin".to_owned() }
}

#[test]
fn credentials_are_checked_by_scheme() {
    let both = admin("pw", "tok");
    assert_eq!(check_auth(&both, Some("Bearer tok")), Ok(()));
    assert_eq!(check_auth(&both, Some("bearer pw")), Ok(()), "the sign-in form sends the password as a bearer");
    // "anyone:pw" and "anyone:tok" in base64.
    assert_eq!(check_auth(&both, Some("Basic YW55b25lOnB3")), Ok(()));
    assert_eq!(
        check_auth(&both, Some("Basic YW55b25lOnRvaw==")).map_err(|e| e.0),
        Err(401),
        "Basic takes the password"
    );
    for wrong in
        [None, Some(""), Some("Bearer"), Some("Bearer to"), Some("Bearer tokk"), Some("Token tok"), Some("Basic !!")]
    {
        assert_eq!(check_auth(&both, wrong).map_err(|e| e.0), Err(401), "{wrong:?}");
    }
    // An unset credential never matches an empty one.
    let token_only = admin("", "tok");
    assert_eq!(check_auth(&token_only, Some("Basic Og==")).map_err(|e| e.0), Err(401));
    assert_eq!(check_auth(&token_only, Some("Bearer  ")).map_err(|e| e.0), Err(401));
}

fn report(node: &str, worker: u32, connections: u64, channels: &[(&str, u64)]) -> Report {
    Report {
        node: node.to_owned(),
        worker,
        version: "1".to_owned(),
        broker: "closed".to_owned(),
        connections,
        rate_in: 1.5,
        channel_count: channels.len() as u64,
        channels: channels.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
        ..Report::default()
    }
}

#[test]
fn reports_add_up_by_node_and_channel() {
    let mut deaf = report("b", 0, 5, &[("news", 1)]);
    deaf.broker = "deaf".to_owned();
    let reports = [report("a", 0, 2, &[("news", 2), ("x", 1)]), report("a", 1, 3, &[("news", 4)]), deaf];
    let nodes = nodes(&reports);
    let body: serde_json::Value = serde_json::from_str(&nodes_json("a", &nodes)).unwrap_or_default();
    assert_eq!(body["totals"]["connections"], 10);
    assert_eq!(body["totals"]["nodes"], 2);
    assert_eq!(body["nodes"][0]["id"], "a");
    assert_eq!(body["nodes"][0]["workers"], 2);
    assert_eq!(body["nodes"][0]["connections"], 5);
    assert_eq!(body["nodes"][0]["msgs_in_per_sec"], 3.0);
    assert_eq!(body["nodes"][1]["broker"], "deaf");

    let all = ChannelFilter { limit: 10, ..ChannelFilter::default() };
    let body: serde_json::Value = serde_json::from_str(&channels_json(&reports, &all)).unwrap_or_default();
    assert_eq!(body["total"], 2);
    assert_eq!(body["channels"][0]["name"], "news");
    assert_eq!(body["channels"][0]["subscribers"], 7);
    assert_eq!(body["channels"][0]["nodes"], serde_json::json!(["a", "b"]));
    let busy = ChannelFilter { min_subscribers: 2, ..all.clone() };
    let body: serde_json::Value = serde_json::from_str(&channels_json(&reports, &busy)).unwrap_or_default();
    assert_eq!(body["total"], 1);
    let named = ChannelFilter { contains: "x".to_owned(), limit: 0, ..all };
    let body: serde_json::Value = serde_json::from_str(&channels_json(&reports, &named)).unwrap_or_default();
    assert_eq!((body["total"].clone(), body["channels"].as_array().map(Vec::len)), (1.into(), Some(0)));
}

#[test]
fn messages_round_trip_and_bad_ones_are_refused() {
    let message = Message::Disconnect(Target::User("u1".to_owned()));
    let text = serde_json::to_string(&message).unwrap_or_default();
    assert_eq!(serde_json::from_str::<Message>(&text).ok(), Some(message));
    assert!(serde_json::from_str::<Message>(r#"{"kind":"disconnect","nobody":"x"}"#).is_err());
    assert!(serde_json::from_str::<Target>(r#"{"connection":"n-0-1.0","user":"u"}"#).is_err());
}

/// docs/ADMIN.md and the README state the page's size: they must say the size it has.
#[test]
fn the_docs_give_the_pages_size_in_bytes() {
    const ADMIN_DOC: &str = include_str!("../../../docs/ADMIN.md");
    const README: &str = include_str!("../../../README.md");
    let digits = PAGE.len().to_string();
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let stated = format!("{grouped} bytes");
    assert!(ADMIN_DOC.contains(&format!("**{stated}**")), "docs/ADMIN.md must say the page is {stated}");
    assert!(README.contains(&stated), "README.md must say the page is {stated}");
    assert!(!PAGE.contains("http://") && !PAGE.contains("https://"), "the page must load nothing from elsewhere");
}
