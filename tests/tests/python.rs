//! The echo and broadcast routes driven by Python `websockets`, an independent client, with and
//! without permessage-deflate. `scripts/python-venv` installs it; `scripts/test` runs that first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_tests::{Server, Settings, for_each_binary};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn python_websockets_clients_with_and_without_deflate() {
    let python = repo().join(".venv/bin/python");
    if !python.exists() {
        // A missing tool is a failure, never a quiet pass; skipping is asked for by name.
        assert!(
            std::env::var_os("SWITCHBOARD_SKIP_PYTHON").is_some(),
            "{} is missing: run scripts/python-venv (or set SWITCHBOARD_SKIP_PYTHON=1 to skip this test)",
            python.display()
        );
        eprintln!("skipped on request (SWITCHBOARD_SKIP_PYTHON): {} is missing", python.display());
        return;
    }
    let script = repo().join("scripts/python-client.py");
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(server.url("/echo"))
            .arg(server.url("/chat"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Kills only a client that overran its time; a finished one is reaped either way.
        let _ = child.kill();
        let output = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for python: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        eprint!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "python client failed ({})", output.status);
        for check in ["ok: plain", "ok: deflate", "ok: broadcast"] {
            assert!(stdout.contains(check), "no {check:?} in {stdout}");
        }
    });
}
