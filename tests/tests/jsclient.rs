//! The TypeScript client (`clients/js`) against both shells: its live tests in Node (tokens
//! and refresh, namespaces, join/leave, recovery after a dropped socket, 4401 and 4403) and
//! its browser test in headless Chromium. `scripts/js-client` builds it and `scripts/chromium`
//! installs the browser; both are run by `scripts/test`.

use std::path::Path;

use switchboard_tests::native::{API_KEY, CONFIG, SECRET};
use switchboard_tests::pusher::{repo, run_script_with_env};
use switchboard_tests::{Server, for_each_binary};

/// Panics naming the install step when the built client or Chromium is missing.
fn ready(browser: bool) {
    let dist = repo().join("clients/js/dist/index.js");
    assert!(dist.exists(), "{} is missing: run scripts/js-client (it needs node and npm)", dist.display());
    let playwright = repo().join("clients/js/node_modules/playwright-core/package.json");
    assert!(playwright.exists(), "{} is missing: run scripts/js-client", playwright.display());
    if browser {
        assert!(Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium is missing: run scripts/chromium");
    }
}

fn run(file: &str) {
    for_each_binary(|bin| {
        let server = Server::start(bin, CONFIG);
        let (url, http) = (server.url("/ws"), format!("http://{}", server.addr));
        let runner = repo().join("clients/js/test/run.mjs");
        let test = repo().join("clients/js/test").join(file);
        let env = [
            ("SWITCHBOARD_URL", url.as_str()),
            ("SWITCHBOARD_HTTP", http.as_str()),
            ("SWITCHBOARD_API_KEY", API_KEY),
            ("SWITCHBOARD_SECRET", SECRET),
        ];
        let out = run_script_with_env(Path::new("node"), &[&runner.to_string_lossy(), &test.to_string_lossy()], &env);
        // node --test prints its tally last; a run that tested nothing must not pass.
        assert!(out.contains("# fail 0") && !out.contains("# pass 0"), "{}: {out}", bin.display());
    });
}

#[test]
fn the_client_passes_its_live_tests() {
    ready(false);
    run("live.test.mjs");
}

#[test]
fn the_client_works_in_headless_chromium() {
    ready(true);
    run("browser.test.mjs");
}
