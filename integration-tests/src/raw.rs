//! Calls with bodies already encoded: a gRPC codec and a prost message that pass bytes
//! through, for tests that call every RPC (or frame kind) without knowing its types.

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Passes request and response bodies through as bytes.
#[derive(Clone, Default)]
pub struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// A message already encoded.
#[derive(Clone, PartialEq)]
pub struct RawMsg(pub Vec<u8>);

impl prost::Message for RawMsg {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        _tag: u32,
        _wire_type: prost::encoding::WireType,
        _buf: &mut impl Buf,
        _ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        Ok(())
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

impl std::fmt::Debug for RawMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawMsg({} bytes)", self.0.len())
    }
}

/// Opens a data-port connection to `addr`, writes the preface and `frames` (kind, request id,
/// encoded body) back to back, and returns each answer by request id: `None` for OK, the
/// error code otherwise.
pub async fn exchange(
    addr: &str,
    frames: &[(sluice_proto::frame::Kind, u64, Vec<u8>)],
) -> std::collections::BTreeMap<u64, Option<sluice_proto::ErrorCode>> {
    try_exchange(addr, None, frames).await.unwrap()
}

/// [`exchange`] over plain TCP or, with `tls`, TLS; an error when the connection fails or
/// closes before every answer came (within 5 s of each read).
pub async fn try_exchange(
    addr: &str,
    tls: Option<&sluice_proto::tls::net::Connector>,
    frames: &[(sluice_proto::frame::Kind, u64, Vec<u8>)],
) -> anyhow::Result<std::collections::BTreeMap<u64, Option<sluice_proto::ErrorCode>>> {
    use sluice_proto::frame;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = tls.map(|c| c.with_alpn(sluice_proto::tls::ALPN_DATA));
    let (mut rd, mut wr) = sluice_proto::tls::net::connect_split(addr, tls.as_ref()).await?;
    let mut out = bytes::BytesMut::new();
    out.put_slice(&frame::PREFACE);
    for (kind, id, body) in frames {
        frame::encode_request(*kind, *id, &RawMsg(body.clone()), &mut out);
    }
    wr.write_all(&out).await?;
    wr.flush().await?;
    let mut input = bytes::BytesMut::new();
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < frames.len() {
        match frame::take_response(&mut input, 1 << 20).map_err(|e| anyhow::anyhow!("{e}"))? {
            Some((h, r)) => {
                answers.insert(h, r.err().map(|e| e.code));
            }
            None => {
                let read = rd.read_buf(&mut input);
                let n = tokio::time::timeout(std::time::Duration::from_secs(5), read).await??;
                anyhow::ensure!(n > 0, "connection closed");
            }
        }
    }
    Ok(answers)
}
