//! Message trace parsing: trace-topic bodies (anyone may write to the trace topic) and
//! `traceparent` values (any producer sets them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::trace::{TraceContext, TraceEvent};

fuzz_target!(|data: &[u8]| {
    if let Some(e) = TraceEvent::decode(data) {
        // What decodes encodes and decodes to the same event.
        assert_eq!(TraceEvent::decode(&e.encode()), Some(e));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(ctx) = TraceContext::parse(text) {
            assert_eq!(TraceContext::parse(&ctx.to_string()), Some(ctx));
        }
    }
});
