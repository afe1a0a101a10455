//! The Send RPC made from shared messages: a retry sends the same batch again without copying
//! it, and the request is encoded into one buffer of the right size.

use std::sync::Arc;

use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;
use sluice_proto::v1::{self, SendResponse};
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Encodes exactly like `sluice.v1.SendRequest` (the broker decodes it as one).
#[derive(Debug, Default, Clone)]
pub(crate) struct SharedSendRequest {
    pub(crate) topic: String,
    pub(crate) queue_id: u32,
    pub(crate) messages: Arc<Vec<v1::Message>>,
    /// An idempotent batch's producer id, epoch and first sequence.
    pub(crate) seq: Option<BatchSequence>,
    /// A transaction's send: its id and producer group.
    pub(crate) tx: Option<Arc<TxFields>>,
}

/// The transaction a send belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxFields {
    pub(crate) id: String,
    pub(crate) group: String,
}

/// The sequence fields of an idempotent send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchSequence {
    pub(crate) producer_id: u64,
    pub(crate) epoch: u32,
    pub(crate) base: u64,
}

impl SharedSendRequest {
    pub(crate) fn new(
        queue: &crate::route::MessageQueue,
        messages: Arc<Vec<v1::Message>>,
        seq: Option<BatchSequence>,
        tx: Option<Arc<TxFields>>,
    ) -> Self {
        SharedSendRequest {
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            messages,
            seq,
            tx,
        }
    }

    /// The sequence fields with proto3's defaults left out, as (field, value) pairs.
    fn seq_fields(&self) -> [(u32, u64); 3] {
        let s = self.seq.unwrap_or(BatchSequence {
            producer_id: 0,
            epoch: 0,
            base: 0,
        });
        [(4, s.producer_id), (5, u64::from(s.epoch)), (6, s.base)]
    }
}

impl prost::Message for SharedSendRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // Field numbers of SendRequest; proto3 leaves default scalars out.
        if !self.topic.is_empty() {
            encoding::string::encode(1, &self.topic, buf);
        }
        if self.queue_id != 0 {
            encoding::uint32::encode(2, &self.queue_id, buf);
        }
        for m in self.messages.iter() {
            encoding::message::encode(3, m, buf);
        }
        // uint32 and uint64 share the varint encoding.
        for (tag, v) in self.seq_fields() {
            if v != 0 {
                encoding::uint64::encode(tag, &v, buf);
            }
        }
        if let Some(tx) = &self.tx {
            for (tag, v) in [(7, &tx.id), (8, &tx.group)] {
                if !v.is_empty() {
                    encoding::string::encode(tag, v, buf);
                }
            }
        }
    }

    /// Only ever encoded; reading one back skips every field.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let topic = if self.topic.is_empty() {
            0
        } else {
            encoding::string::encoded_len(1, &self.topic)
        };
        let queue = if self.queue_id == 0 {
            0
        } else {
            encoding::uint32::encoded_len(2, &self.queue_id)
        };
        let seq: usize = self
            .seq_fields()
            .iter()
            .filter(|(_, v)| *v != 0)
            .map(|(tag, v)| encoding::uint64::encoded_len(*tag, v))
            .sum();
        let tx: usize = self.tx.as_ref().map_or(0, |tx| {
            [(7, &tx.id), (8, &tx.group)]
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(tag, v)| encoding::string::encoded_len(*tag, v))
                .sum()
        });
        topic + queue + encoding::message::encoded_len_repeated(3, &self.messages) + seq + tx
    }

    fn clear(&mut self) {
        *self = SharedSendRequest::default();
    }
}

/// Framing tonic adds in front of a message (compression flag and length).
const GRPC_HEADER: usize = 5;

/// The Send codec with an encode buffer sized for the request, so a large batch is not grown
/// (and copied) step by step.
pub(crate) struct SendCodec {
    pub(crate) encoded_len: usize,
}

impl Codec for SendCodec {
    type Encode = SharedSendRequest;
    type Decode = SendResponse;
    type Encoder = ProstEncoder<SharedSendRequest>;
    type Decoder = ProstDecoder<SendResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        let size = self.encoded_len + GRPC_HEADER;
        // The yield threshold only splits what is already encoded; keep tonic's default.
        ProstEncoder::new(BufferSettings::new(size, 32 << 10))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn encodes_exactly_like_a_send_request() {
        let messages = vec![
            v1::Message {
                body: bytes::Bytes::from_static(b"hello"),
                tag: "t".into(),
                keys: vec!["k".into()],
                message_id: "id-1".into(),
                born_timestamp_ms: 42,
                born_host: "h".into(),
                ..Default::default()
            },
            v1::Message {
                body: bytes::Bytes::from(vec![7u8; 300]),
                properties: [("a".to_string(), "b".to_string())].into(),
                ..Default::default()
            },
        ];
        let seqs = [
            None,
            Some(BatchSequence {
                producer_id: u64::MAX,
                epoch: 7,
                base: 1 << 33,
            }),
            Some(BatchSequence {
                producer_id: 5,
                epoch: 0,
                base: 0,
            }),
        ];
        for ((topic, queue_id), seq) in [("orders", 3), ("", 0)]
            .into_iter()
            .flat_map(|q| seqs.map(|s| (q, s)))
        {
            let tx = seq.map(|s| {
                Arc::new(TxFields {
                    id: format!("tx-{}", s.base),
                    group: "pg".into(),
                })
            });
            let shared = SharedSendRequest {
                topic: topic.into(),
                queue_id,
                messages: Arc::new(messages.clone()),
                seq,
                tx: tx.clone(),
            };
            let s = seq.unwrap_or(BatchSequence {
                producer_id: 0,
                epoch: 0,
                base: 0,
            });
            let plain = v1::SendRequest {
                topic: topic.into(),
                queue_id,
                messages: messages.clone(),
                producer_id: s.producer_id,
                producer_epoch: s.epoch,
                base_sequence: s.base,
                transaction_id: tx.as_ref().map(|t| t.id.clone()).unwrap_or_default(),
                producer_group: tx.as_ref().map(|t| t.group.clone()).unwrap_or_default(),
            };
            assert_eq!(shared.encode_to_vec(), plain.encode_to_vec());
            assert_eq!(shared.encoded_len(), plain.encoded_len());
            assert_eq!(
                v1::SendRequest::decode(shared.encode_to_vec().as_slice()).unwrap(),
                plain
            );
        }
        // Decoding into the shared form is refused field by field without failing.
        let back = SharedSendRequest::decode(
            v1::SendRequest {
                topic: "x".into(),
                ..Default::default()
            }
            .encode_to_vec()
            .as_slice(),
        )
        .unwrap();
        assert!(back.topic.is_empty());
    }
}
