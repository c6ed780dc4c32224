#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use switchboard_core::fuzzing::{TlsFixture, tls};

/// A certificate made at start (none is committed); every input shares it.
fn fixture() -> &'static TlsFixture {
    static FIXTURE: OnceLock<TlsFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
        TlsFixture::new(&certified.cert.pem(), &certified.signing_key.serialize_pem())
    })
}

fuzz_target!(|data: &[u8]| tls(Instant::now(), data, fixture()));
