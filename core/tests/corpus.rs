//! Replays every committed fuzz input (`fuzz/corpus/<target>/` seeds and
//! `fuzz/regressions/<target>/` crashes once found) through the same entry points the fuzz
//! targets call, so `cargo test` keeps them passing without a fuzzer.
//!
//! `fuzz/pending/<target>/` holds crashes found in the core and not fixed yet: they are
//! replayed by an ignored test (`cargo test --test corpus -- --ignored`) that expects each to
//! still fail. Once the core is fixed, move the file to `fuzz/regressions/<target>/`. While a
//! bug is pending, the driver in `core/src/fuzzing.rs` may steer around it (say where) so the
//! fuzzers find others.

use std::path::Path;
use std::time::Instant;

use switchboard_core::fuzzing;
use switchboard_testkit::{files, folders, fuzz_dir, origin, read};

type Entry = fn(Instant, &[u8]);

/// Every fuzz target and its entry point; a corpus folder not named here fails the test.
const TARGETS: [(&str, Entry); 11] = [
    ("handshake", fuzzing::handshake),
    ("frames", fuzzing::frames),
    ("pubsub_json", fuzzing::pubsub_json),
    ("config", fuzzing::config),
    ("http_api", fuzzing::http_api),
    ("hub_ops", fuzzing::hub_ops),
    ("resp", fuzzing::resp),
    ("pusher", fuzzing::pusher),
    ("pusher_hub", fuzzing::pusher_hub),
    ("native", fuzzing::native),
    ("tls", tls),
];

/// The `tls` target with its certificate, made once per run (never committed), as the fuzz
/// target makes its own.
fn tls(t0: Instant, data: &[u8]) {
    static FIXTURE: std::sync::OnceLock<fuzzing::TlsFixture> = std::sync::OnceLock::new();
    let fixture = FIXTURE.get_or_init(|| {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
        fuzzing::TlsFixture::new(&certified.cert.pem(), &certified.signing_key.serialize_pem())
    });
    fuzzing::tls(t0, data, fixture);
}

/// Folders of inputs that must keep passing.
const KINDS: [&str; 2] = ["corpus", "regressions"];

fn entry(target: &str) -> Entry {
    match TARGETS.iter().find(|(name, _)| *name == target) {
        Some(&(_, entry)) => entry,
        None => panic!("no entry point for fuzz target {target}"),
    }
}

/// Runs one input; the panic message if it fails.
fn run(entry: Entry, path: &Path) -> Result<(), String> {
    let data = read(path);
    let t0 = origin();
    std::panic::catch_unwind(|| entry(t0, &data)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    })
}

/// Runs every input of `target`; on failure lists each failing file with its panic.
fn replay(target: &str) -> usize {
    let entry = entry(target);
    let mut failures = Vec::new();
    let mut count = 0;
    for kind in KINDS {
        for path in files(&fuzz_dir().join(kind).join(target)) {
            count += 1;
            if let Err(message) = run(entry, &path) {
                failures.push(format!("{}: {message}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {count} {target} inputs fail:\n{}", failures.len(), failures.join("\n"));
    count
}

#[test]
#[ignore = "core bugs not fixed yet; run to see they still reproduce"]
fn pending_crashes_still_reproduce() {
    let pending = fuzz_dir().join("pending");
    for name in folders(&pending) {
        for path in files(&pending.join(&name)) {
            match run(entry(&name), &path) {
                Ok(()) => panic!("{} passes now: move it to fuzz/regressions/{name}/", path.display()),
                Err(message) => eprintln!("{}: still fails: {message}", path.display()),
            }
        }
    }
}

#[test]
fn handshake_corpus() {
    assert!(replay("handshake") > 0, "handshake has seeds");
}

#[test]
fn frames_corpus() {
    assert!(replay("frames") > 0, "frames has seeds");
}

#[test]
fn pubsub_json_corpus() {
    assert!(replay("pubsub_json") > 0, "pubsub_json has seeds");
}

#[test]
fn native_corpus() {
    assert!(replay("native") > 0, "native has seeds");
}

#[test]
fn config_corpus() {
    assert!(replay("config") > 0, "config has seeds");
}

#[test]
fn http_api_corpus() {
    assert!(replay("http_api") > 0, "http_api has seeds");
}

#[test]
fn hub_ops_corpus() {
    assert!(replay("hub_ops") > 0, "hub_ops has seeds");
}

#[test]
fn resp_corpus() {
    assert!(replay("resp") > 0, "resp has seeds");
}

#[test]
fn pusher_corpus() {
    assert!(replay("pusher") > 0, "pusher has seeds");
}

#[test]
fn pusher_hub_corpus() {
    assert!(replay("pusher_hub") > 0, "pusher_hub has seeds");
}

#[test]
fn tls_corpus() {
    assert!(replay("tls") > 0, "tls has seeds");
}

#[test]
fn every_corpus_folder_is_a_known_target() {
    for kind in ["corpus", "regressions", "pending"] {
        for name in folders(&fuzz_dir().join(kind)) {
            assert!(TARGETS.iter().any(|(t, _)| *t == name), "fuzz/{kind}/{name} has no replay here");
        }
    }
}
