//! The data port's framing: `sluice.v1` messages over plain TCP, for the calls where gRPC's
//! per-call cost (HTTP/2 headers, a stream per call, tower layers) dominates: Send,
//! EndTransaction, and the Raft traffic between replicas.
//!
//! A connection starts with the client's 4-byte [`PREFACE`]. Then both sides exchange frames;
//! all integers are big-endian:
//!
//! ```text
//! request:  body_len u32 | kind u8 | request_id u64 | body (the call's request message)
//! response: body_len u32 | kind u8 | request_id u64 | status u8 | body
//! ```
//!
//! `status` 0 means the body is the call's response message, 1 that it is an `ErrorDetail`.
//! Responses may come back in any order; `request_id` pairs them with their requests. The
//! layout is specified for other languages in docs/protocol.md.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::v1::ErrorDetail;
use crate::ApiError;

/// "SLW" and the protocol version.
pub const PREFACE: [u8; 4] = *b"SLW\x01";
pub const REQUEST_HEADER_LEN: usize = 13;
pub const RESPONSE_HEADER_LEN: usize = 14;

const STATUS_OK: u8 = 0;
const STATUS_ERROR: u8 = 1;

/// The calls the data port serves. Values are wire codes: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// `SendRequest` -> `SendResponse`.
    Send = 1,
    /// `RaftBatch` -> `RaftAck`: Raft traffic between the replicas of a group.
    Raft = 2,
    /// `EndTransactionRequest` -> `EndTransactionResponse`: a producer's commit or rollback.
    EndTransaction = 3,
    /// `DataPortAuthRequest` -> `DataPortAuthResponse`: who the connection's later frames act
    /// as (a user, or a replica with the cluster secret).
    Auth = 4,
}

impl Kind {
    pub fn from_wire(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Send),
            2 => Some(Kind::Raft),
            3 => Some(Kind::EndTransaction),
            4 => Some(Kind::Auth),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub body_len: usize,
    /// Raw, so a server can answer a kind it does not know with an error.
    pub kind: u8,
    pub request_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    pub body_len: usize,
    pub kind: u8,
    pub request_id: u64,
    pub ok: bool,
}

/// The header at the start of `buf`, or `None` when fewer than [`REQUEST_HEADER_LEN`] bytes
/// are there yet.
pub fn peek_request_header(buf: &[u8]) -> Option<RequestHeader> {
    let mut b = buf.get(..REQUEST_HEADER_LEN)?;
    Some(RequestHeader {
        body_len: b.get_u32() as usize,
        kind: b.get_u8(),
        request_id: b.get_u64(),
    })
}

/// The header at the start of `buf`; `None` while incomplete. An unknown status byte is an
/// error: the stream cannot be trusted past it.
pub fn peek_response_header(buf: &[u8]) -> Result<Option<ResponseHeader>, ApiError> {
    let Some(mut b) = buf.get(..RESPONSE_HEADER_LEN) else {
        return Ok(None);
    };
    let body_len = b.get_u32() as usize;
    let kind = b.get_u8();
    let request_id = b.get_u64();
    let ok = match b.get_u8() {
        STATUS_OK => true,
        STATUS_ERROR => false,
        other => {
            return Err(ApiError::internal(format!(
                "data port answered request {request_id} with status byte {other}"
            )))
        }
    };
    Ok(Some(ResponseHeader {
        body_len,
        kind,
        request_id,
        ok,
    }))
}

/// One answer off the wire: the request id it answers, and the response body or the error.
pub type Answer = (u64, Result<Bytes, ApiError>);

/// Takes the first complete response frame off `input`: its request id and either the
/// response body (status OK) or the error it carries. `None` while the frame is incomplete
/// (room for the rest is reserved). A body above `max_body` or a bad status byte is an error:
/// the stream cannot be trusted past it.
pub fn take_response(input: &mut BytesMut, max_body: usize) -> Result<Option<Answer>, ApiError> {
    let Some(h) = peek_response_header(input)? else {
        return Ok(None);
    };
    if h.body_len > max_body {
        return Err(ApiError::internal(format!(
            "answer to request {} of {} bytes is above the {max_body}-byte limit",
            h.request_id, h.body_len
        )));
    }
    let frame_len = RESPONSE_HEADER_LEN + h.body_len;
    if input.len() < frame_len {
        input.reserve(frame_len - input.len());
        return Ok(None);
    }
    input.advance(RESPONSE_HEADER_LEN);
    let body = input.split_to(h.body_len).freeze();
    let r = if h.ok {
        Ok(body)
    } else {
        Err(decode_error(body))
    };
    Ok(Some((h.request_id, r)))
}

/// Appends a request frame to `out`.
pub fn encode_request(kind: Kind, request_id: u64, msg: &impl Message, out: &mut BytesMut) {
    let len = msg.encoded_len();
    out.reserve(REQUEST_HEADER_LEN + len);
    out.put_u32(len as u32);
    out.put_u8(kind as u8);
    out.put_u64(request_id);
    // Cannot fail: the space was reserved above and BytesMut grows anyway.
    let _ = msg.encode(out);
}

/// A Raft batch request frame as pieces: the header and small fields are encoded into
/// `scratch`, the Raft messages (the bulk: entries) are referenced, not copied. Written with
/// vectored writes, the bytes are identical to [`encode_request`]'s. The leader sends every
/// entry to each follower this way; copying each batch into one buffer first was a visible
/// share of its CPU.
pub fn raft_batch_pieces(
    request_id: u64,
    batch: &crate::v1::RaftBatch,
    scratch: &mut BytesMut,
) -> Pieces {
    use prost::encoding::{encode_key, encode_varint, WireType};
    scratch.clear();
    let len = batch.encoded_len();
    scratch.put_u32(len as u32);
    scratch.put_u8(Kind::Raft as u8);
    scratch.put_u64(request_id);
    // `messages` is the last field, and prost writes fields in number order: the other
    // fields, then each message as field 4.
    let head = crate::v1::RaftBatch {
        broker_name: batch.broker_name.clone(),
        from: batch.from,
        to: batch.to,
        messages: Vec::new(),
    };
    head.encode_raw(scratch);
    let mut parts = std::collections::VecDeque::with_capacity(2 * batch.messages.len() + 1);
    for m in &batch.messages {
        encode_key(4, WireType::LengthDelimited, scratch);
        encode_varint(m.len() as u64, scratch);
        parts.push_back(scratch.split().freeze());
        parts.push_back(m.clone());
    }
    if !scratch.is_empty() {
        parts.push_back(scratch.split().freeze());
    }
    Pieces { parts }
}

/// Bytes in several pieces, read in order ([`Buf`], with vectored chunks).
#[derive(Debug, Default)]
pub struct Pieces {
    parts: std::collections::VecDeque<Bytes>,
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    fn chunk(&self) -> &[u8] {
        self.parts.iter().find(|p| !p.is_empty()).map_or(&[], |p| p)
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            let n = cnt.min(front.len());
            front.advance(n);
            cnt -= n;
            if front.is_empty() {
                self.parts.pop_front();
            }
        }
        while self.parts.front().is_some_and(Bytes::is_empty) {
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for p in self.parts.iter().filter(|p| !p.is_empty()) {
            if n == dst.len() {
                break;
            }
            dst[n] = std::io::IoSlice::new(p);
            n += 1;
        }
        n
    }
}

/// Appends a successful response frame to `out`.
pub fn encode_ok(kind: u8, request_id: u64, msg: &impl Message, out: &mut BytesMut) {
    put_response(kind, request_id, STATUS_OK, msg, out);
}

/// Appends an error response frame to `out`.
pub fn encode_error(kind: u8, request_id: u64, err: &ApiError, out: &mut BytesMut) {
    put_response(kind, request_id, STATUS_ERROR, &err.to_detail(), out);
}

fn put_response(kind: u8, request_id: u64, status: u8, msg: &impl Message, out: &mut BytesMut) {
    let len = msg.encoded_len();
    out.reserve(RESPONSE_HEADER_LEN + len);
    out.put_u32(len as u32);
    out.put_u8(kind);
    out.put_u64(request_id);
    out.put_u8(status);
    // Through a Vec: prost writes varints a byte at a time, and `BytesMut::put_slice` is an
    // out-of-line call (a `memcpy`) per byte, Vec's is inlined. A send's answer is all varints
    // and short strings (one result per message): 1.6 % of a broker's samples went there.
    let mut body = Vec::with_capacity(len);
    let _ = msg.encode(&mut body);
    out.extend_from_slice(&body);
}

/// Reads an error response's body back.
pub fn decode_error(body: Bytes) -> ApiError {
    match ErrorDetail::decode(body) {
        Ok(d) => ApiError::from_detail(d),
        Err(e) => ApiError::internal(format!("undecodable error from the data port: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{SendRequest, SendResponse};
    use crate::ErrorCode;

    #[test]
    fn request_round_trips() {
        let req = SendRequest {
            topic: "t".into(),
            queue_id: 3,
            messages: vec![],
            ..Default::default()
        };
        let mut out = BytesMut::new();
        encode_request(Kind::Send, 42, &req, &mut out);
        assert_eq!(peek_request_header(&out[..REQUEST_HEADER_LEN - 1]), None);
        let h = peek_request_header(&out).unwrap();
        assert_eq!(h.kind, Kind::Send as u8);
        assert_eq!(Kind::from_wire(h.kind), Some(Kind::Send));
        assert_eq!(h.request_id, 42);
        assert_eq!(h.body_len, out.len() - REQUEST_HEADER_LEN);
        let back = SendRequest::decode(&out[REQUEST_HEADER_LEN..]).unwrap();
        assert_eq!(back, req);
        assert_eq!(Kind::from_wire(2), Some(Kind::Raft));
        assert_eq!(Kind::from_wire(0), None);
        assert_eq!(Kind::from_wire(200), None);
    }

    #[test]
    fn raft_batch_pieces_are_the_request_frame() {
        use crate::v1::RaftBatch;
        let batches = [
            RaftBatch {
                broker_name: "broker-a".into(),
                from: 1,
                to: 3,
                messages: vec![
                    Bytes::from(vec![7u8; 300]),
                    Bytes::new(),
                    Bytes::from_static(b"m"),
                ],
            },
            RaftBatch::default(),
            RaftBatch {
                messages: vec![Bytes::from(vec![1u8; 70_000])],
                ..Default::default()
            },
        ];
        let mut scratch = BytesMut::new();
        for b in &batches {
            let mut whole = BytesMut::new();
            encode_request(Kind::Raft, 9, b, &mut whole);
            let mut pieces = raft_batch_pieces(9, b, &mut scratch);
            assert_eq!(pieces.remaining(), whole.len());
            let mut slices = [std::io::IoSlice::new(&[]); 2];
            assert!(pieces.chunks_vectored(&mut slices) <= 2);
            // Read back in uneven steps, as partial writes would.
            let mut got = Vec::new();
            while pieces.has_remaining() {
                let step = pieces.chunk().len().min(5);
                got.extend_from_slice(&pieces.chunk()[..step]);
                pieces.advance(step);
            }
            assert_eq!(got, whole.to_vec());
            assert_eq!(pieces.chunk(), &[] as &[u8]);
        }
    }

    #[test]
    fn responses_round_trip() {
        let mut out = BytesMut::new();
        let resp = SendResponse {
            broker_name: "b".into(),
            queue_id: 1,
            results: vec![],
            store_timestamp_ms: 5,
        };
        encode_ok(1, 7, &resp, &mut out);
        let err = ApiError::not_master("10.0.0.2:10911");
        encode_error(1, 8, &err, &mut out);
        let mut buf = out.freeze();

        let h = peek_response_header(&buf).unwrap().unwrap();
        assert!(h.ok && h.request_id == 7 && h.kind == 1);
        buf.advance(RESPONSE_HEADER_LEN);
        let body = buf.split_to(h.body_len);
        assert_eq!(SendResponse::decode(body).unwrap(), resp);

        let h = peek_response_header(&buf).unwrap().unwrap();
        assert!(!h.ok && h.request_id == 8);
        buf.advance(RESPONSE_HEADER_LEN);
        assert_eq!(decode_error(buf.split_to(h.body_len)), err);
        assert!(buf.is_empty());
        assert_eq!(peek_response_header(&buf).unwrap(), None);
    }

    #[test]
    fn take_response_waits_for_whole_frames_and_bounds_bodies() {
        let mut frames = BytesMut::new();
        encode_ok(1, 7, &ErrorDetail::default(), &mut frames);
        encode_error(1, 8, &ApiError::internal("boom"), &mut frames);
        let whole = frames.clone();
        let mut input = BytesMut::from(&whole[..RESPONSE_HEADER_LEN - 1]);
        assert_eq!(take_response(&mut input, 1 << 20).unwrap(), None);
        input.extend_from_slice(&whole[RESPONSE_HEADER_LEN - 1..]);
        let (id, r) = take_response(&mut input, 1 << 20).unwrap().unwrap();
        assert_eq!((id, r.is_ok()), (7, true));
        let (id, r) = take_response(&mut input, 1 << 20).unwrap().unwrap();
        assert_eq!(id, 8);
        assert_eq!(r.unwrap_err().message, "boom");
        assert!(input.is_empty());
        let mut big = BytesMut::new();
        encode_error(
            1,
            9,
            &ApiError::internal("too long for the limit"),
            &mut big,
        );
        let e = take_response(&mut big, 4).unwrap_err();
        assert!(e.message.contains("limit"), "{e}");
    }

    #[test]
    fn bad_status_byte_and_bad_error_body_are_errors() {
        let mut out = BytesMut::new();
        encode_ok(1, 7, &ErrorDetail::default(), &mut out);
        out[RESPONSE_HEADER_LEN - 1] = 9;
        let e = peek_response_header(&out).unwrap_err();
        assert!(e.message.contains("status byte 9"), "{e}");
        let garbage = Bytes::from_static(&[0xff, 0xff, 0xff]);
        assert_eq!(decode_error(garbage).code, ErrorCode::Internal);
    }
}
