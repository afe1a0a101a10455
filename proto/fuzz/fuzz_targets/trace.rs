//! Message trace parsing: trace-topic bodies (anyone may write to the trace topic) and
//! `traceparent` values (any producer sets them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::trace::{decode_batch, encode_batch, TraceContext, TraceEvent};

fuzz_target!(|data: &[u8]| {
    if let Some(events) = decode_batch(data) {
        // What decodes encodes and decodes to the same events, however the batch is split.
        let again: Vec<TraceEvent> = encode_batch(&events, 256)
            .iter()
            .flat_map(|(b, _)| decode_batch(b).unwrap_or_default())
            .collect();
        assert_eq!(again, events);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(ctx) = TraceContext::parse(text) {
            assert_eq!(TraceContext::parse(&ctx.to_string()), Some(ctx));
        }
    }
});
