//! The echo and broadcast routes driven by Python `websockets`, an independent client, with and
//! without permessage-deflate. `scripts/python-venv` installs it; `scripts/test` runs that first.

use std::path::{Path, PathBuf};

use switchboard_tests::{Server, Settings, for_each_binary, run_python_client};

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
    for_each_binary(|bin| {
        let server = Server::with(bin, &Settings::default());
        run_python_client(&python, &[server.url("/echo"), server.url("/chat")], &[]);
    });
}
