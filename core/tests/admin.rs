//! The admin API's cluster view on a simulated clock: a hub reports itself each second,
//! adds up the reports it hears, forgets a hub gone silent, measures message rates, and
//! obeys disconnect orders from other hubs.

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use support::*;
use switchboard_core::{BrokerCommand, Envelope, Origin};

const TOML: &str = "[admin]\nenabled = true\ntoken = \"tok\"\n";

fn admin_get(sim: &mut Sim, path: &str) -> Value {
    let id = sim.accept();
    let request = format!("GET /admin/api/{path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer tok\r\n\r\n");
    sim.send(id, request.as_bytes());
    let out = String::from_utf8_lossy(&sim.take_output(id)).into_owned();
    assert_eq!(status_of(&out), 200, "{out}");
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The admin reports this hub queued for the others since the last call.
fn reports(sim: &mut Sim) -> Vec<Value> {
    std::mem::take(&mut sim.broker)
        .into_iter()
        .filter_map(|command| match command {
            BrokerCommand::Publish(e) if e.channel == "admin//hubs" => serde_json::from_slice(&e.payload).ok(),
            _ => None,
        })
        .collect()
}

fn from_worker(worker: u32, message: &Value) -> Envelope {
    Envelope {
        origin: Origin { node: "test-node".to_owned(), worker },
        channel: "admin//hubs".to_owned(),
        text: true,
        payload: Bytes::from(message.to_string()),
    }
}

fn conn_name(response: &str) -> String {
    let start = response.find("\"conn_id\":\"").map(|i| i + 11).expect("a welcome with conn_id");
    let len = response[start..].find('"').expect("a closing quote");
    response[start..start + len].to_owned()
}

#[test]
fn a_hub_reports_each_second_adds_up_what_it_hears_and_forgets_the_silent() {
    let mut sim = Sim::worker_of(switchboard_core::Config::from_toml(TOML).expect("parses"), 2);
    let client = sim.open("/ws");
    sim.send(client, &text(r#"{"op":"subscribe","channel":"lobby","id":1}"#));
    sim.advance(Duration::from_millis(10));
    let first = reports(&mut sim);
    assert_eq!(first.len(), 1, "one report at the first timeout: {first:?}");
    assert_eq!((first[0]["kind"].clone(), first[0]["connections"].clone()), (json!("report"), json!(1)));

    // Ten messages in the next second are the rate the next report carries.
    for i in 0..10 {
        sim.send(client, &text(&format!(r#"{{"op":"publish","channel":"lobby","data":{i}}}"#)));
    }
    sim.advance(Duration::from_secs(1));
    let next = reports(&mut sim);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0]["rate_in"], 10.0, "{next:?}");
    assert_eq!(next[0]["channels"], json!([["lobby", 1]]));

    let peer = json!({"kind": "report", "node": "someone-else", "worker": 1, "version": "0", "uptime_secs": 3,
        "draining": false, "broker": "disabled", "connections": 5, "subscriptions": 2, "channel_count": 1,
        "messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0, "rate_in": 2.5, "rate_out": 0.0,
        "channels": [["lobby", 2]]});
    sim.hub.handle_broker(sim.now, &from_worker(1, &peer));
    let nodes = admin_get(&mut sim, "nodes");
    // The envelope's origin names the hub, whatever the report says.
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(1), "{nodes}");
    assert_eq!((nodes["nodes"][0]["workers"].clone(), nodes["totals"]["connections"].clone()), (json!(2), json!(6)));
    assert_eq!(nodes["totals"]["msgs_in_per_sec"], 12.5);
    let channels = admin_get(&mut sim, "channels");
    assert_eq!(channels["channels"][0], json!({"name": "lobby", "subscribers": 3, "nodes": ["test-node"]}));

    // A malformed message is counted, never a panic; a silent hub is forgotten.
    sim.hub.handle_broker(sim.now, &from_worker(1, &json!({"kind": "report", "node": 7})));
    assert_eq!(sim.hub.metrics().protocol_errors, 1);
    sim.advance(Duration::from_secs(5));
    let nodes = admin_get(&mut sim, "nodes");
    assert_eq!((nodes["nodes"][0]["workers"].clone(), nodes["totals"]["connections"].clone()), (json!(1), json!(1)));
}

#[test]
fn a_disconnect_order_from_another_hub_closes_the_named_connection_only() {
    let mut sim = Sim::with_toml(TOML);
    let (kept, _) = sim.connect("/ws", "");
    let (gone, response) = sim.connect("/ws", "");
    let name = conn_name(&response);
    sim.hub.handle_broker(sim.now, &from_worker(1, &json!({"kind": "disconnect", "connection": name})));
    sim.pump();
    assert_eq!(close_code(&sim.take_output(gone)), Some(1008));
    assert!(sim.take_output(kept).is_empty(), "another connection was touched");
    // An order naming another hub's connection does nothing here.
    let elsewhere = name.replacen("test-node-0-", "test-node-1-", 1);
    sim.hub.handle_broker(sim.now, &from_worker(1, &json!({"kind": "disconnect", "connection": elsewhere})));
    sim.pump();
    assert!(sim.take_output(kept).is_empty());
}
