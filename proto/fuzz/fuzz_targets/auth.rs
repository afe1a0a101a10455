//! Request signature headers: any client (or anyone who reaches a port) sends them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::auth::{parse, sign, verify, Credentials, DEFAULT_WINDOW_MS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(signed) = parse(text) {
        // Whatever parses can be checked, and a header signed with the same fields parses
        // to the same key, time and nonce.
        let _ = verify(&signed, &["r"], |_| Some(b"k".to_vec()), signed.timestamp_ms, DEFAULT_WINDOW_MS);
        let creds = Credentials {
            access_key: signed.access_key.clone(),
            secret: b"k".to_vec(),
        };
        let again = parse(&sign(&creds, "r", signed.timestamp_ms, signed.nonce));
        assert!(again.is_ok_and(|a| a.access_key == signed.access_key
            && a.timestamp_ms == signed.timestamp_ms
            && a.nonce == signed.nonce));
    }
});
