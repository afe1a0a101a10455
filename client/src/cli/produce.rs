//! `sluice produce`: send stdin lines (or generated messages), print each ack.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use sluice_client::{ClientConfig, Message, Producer, SendHandle, SendReceipt};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::args::ProduceArgs;
use super::output::print_json;

#[derive(Serialize)]
struct ProducedDoc<'a> {
    topic: &'a str,
    sent: usize,
    failed: u64,
    elapsed_ms: u128,
    receipts: &'a [SendReceipt],
}

struct Acks {
    json: bool,
    receipts: Vec<SendReceipt>,
    failed: u64,
    first_error: Option<String>,
}

impl Acks {
    async fn settle(&mut self, handle: SendHandle) -> anyhow::Result<()> {
        match handle.await {
            Ok(r) => {
                if !self.json {
                    let mut out = std::io::stdout().lock();
                    match (&r.delay_handle, r.deliver_at_ms) {
                        (Some(handle), Some(at)) => writeln!(
                            out,
                            "{} queue={}:{} scheduled for {} handle={handle}",
                            r.message_id,
                            r.broker_name,
                            r.queue_id,
                            sluice_client::time::format_time(at)
                        )?,
                        _ => writeln!(
                            out,
                            "{} queue={}:{} offset={}",
                            r.message_id, r.broker_name, r.queue_id, r.queue_offset
                        )?,
                    }
                }
                self.receipts.push(r);
            }
            Err(e) => {
                eprintln!("send failed: {e}");
                self.failed += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        Ok(())
    }
}

/// A body of exactly `size` bytes that still says which message it is.
pub fn generated_body(i: u64, size: usize) -> Bytes {
    let mut body = format!("message-{i} ").into_bytes();
    body.resize(size, b'x');
    Bytes::from(body)
}

pub async fn produce(config: ClientConfig, args: ProduceArgs) -> anyhow::Result<()> {
    let window = args.in_flight as usize;
    let producer = Producer::builder(config)
        .max_in_flight(window)
        .trace(args.trace)
        .build()?;
    let make = |body: Bytes| {
        let mut m = Message::new(args.topic.clone(), body);
        if let Some(k) = &args.key {
            m = m.with_key(k.clone());
        }
        if let Some(t) = &args.tag {
            m = m.with_tag(t.clone());
        }
        for (k, v) in &args.properties {
            m = m.with_property(k.clone(), v.clone());
        }
        if let Some(d) = args.delay {
            m = m.with_delay(d);
        }
        if let Some(at) = args.deliver_at {
            let at = u64::try_from(at).unwrap_or(0);
            m = m.deliver_at(std::time::UNIX_EPOCH + std::time::Duration::from_millis(at));
        }
        if let Some(level) = args.delay_level {
            m = m.with_delay_level(level);
        }
        m
    };
    let mut acks = Acks {
        json: args.out.json,
        receipts: Vec::new(),
        failed: 0,
        first_error: None,
    };
    // Sends overlap, acks print in send order.
    let mut pending: VecDeque<SendHandle> = VecDeque::new();
    let started = Instant::now();
    let mut total = 0u64;
    let mut lines: Option<Box<dyn AsyncBufRead + Unpin + Send>> = match (&args.count, &args.file) {
        (Some(_), _) => None,
        (None, Some(path)) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
            Some(Box::new(BufReader::new(file)))
        }
        (None, None) => Some(Box::new(BufReader::new(tokio::io::stdin()))),
    };
    loop {
        let body = match (&mut lines, args.count) {
            (None, Some(count)) => {
                if total >= count {
                    break;
                }
                generated_body(total, args.size)
            }
            (Some(reader), _) => match next_line(reader).await? {
                Some(line) if line.is_empty() => continue,
                Some(line) => Bytes::from(line),
                None => break,
            },
            (None, None) => break,
        };
        pending.push_back(producer.send_async(make(body)).await?);
        total += 1;
        if pending.len() >= window {
            if let Some(h) = pending.pop_front() {
                acks.settle(h).await?;
            }
        }
    }
    while let Some(h) = pending.pop_front() {
        acks.settle(h).await?;
    }
    producer.shutdown().await;
    let elapsed = started.elapsed();
    let ok = acks.receipts.len();
    eprintln!(
        "sent {ok} message(s) in {:.3}s ({:.0} msg/s){}",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64().max(1e-9),
        if acks.failed > 0 {
            format!(", {} failed", acks.failed)
        } else {
            String::new()
        }
    );
    if acks.json {
        print_json(&ProducedDoc {
            topic: &args.topic,
            sent: ok,
            failed: acks.failed,
            elapsed_ms: elapsed.as_millis(),
            receipts: &acks.receipts,
        })?;
    }
    if let Some(e) = acks.first_error {
        anyhow::bail!(
            "{} of {total} message(s) failed; first error: {e}",
            acks.failed
        );
    }
    Ok(())
}

/// The next line without its line ending; None at the end of input. Bodies may be any bytes.
async fn next_line(
    reader: &mut (dyn AsyncBufRead + Unpin + Send),
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let n = reader.read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(buf))
}

/// `sluice message cancel HANDLE`.
pub async fn cancel(config: ClientConfig, handle: &str, json: bool) -> anyhow::Result<()> {
    let producer = Producer::builder(config).build()?;
    let outcome = producer.cancel_delayed(handle).await;
    producer.shutdown().await;
    let o = outcome?;
    if json {
        return print_json(&o);
    }
    let what = match o.outcome {
        "cancelled" => "cancelled: it will not be delivered",
        "already_delivered" => "too late: it was delivered already",
        "already_cancelled" => "it had been cancelled already",
        _ => "unknown outcome",
    };
    println!(
        "{} (topic {}, due {}): {what}",
        o.message_id,
        o.topic,
        sluice_client::time::format_time(o.deliver_at_ms)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_bodies_have_the_requested_size() {
        assert_eq!(generated_body(7, 16).as_ref(), b"message-7 xxxxxx");
        assert_eq!(generated_body(12345, 4).as_ref(), b"mess");
        assert_eq!(generated_body(1, 1000).len(), 1000);
    }

    #[tokio::test]
    async fn lines_lose_their_endings_only() {
        let data: &[u8] = b"a\r\nb\n\nlast";
        let mut reader: Box<dyn AsyncBufRead + Unpin + Send> = Box::new(BufReader::new(data));
        let mut got = Vec::new();
        while let Some(l) = next_line(&mut *reader).await.unwrap() {
            got.push(l);
        }
        assert_eq!(
            got,
            [b"a".to_vec(), b"b".to_vec(), vec![], b"last".to_vec()]
        );
    }
}
