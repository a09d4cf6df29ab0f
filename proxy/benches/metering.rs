//! What metering costs per SSE chunk of a streamed OpenAI answer: the meter reading every chunk
//! (and parsing the one with usage), and the filter that keeps the usage chunk Tollgate asked
//! for from the client, against passing the same chunks on untouched.
//! `cargo bench -p tollgate-proxy --bench metering` (each figure is for a stream of 500 chunks).

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_crds::resources::Metering;
use tollgate_proxy::llm::Estimates;
use tollgate_proxy::llm::meter::{Meter, Settlement, UsageChunkFilter};
use tollgate_proxy::quota::Metered;

const CHUNKS: usize = 500;

/// An OpenAI chat stream as a backend writes it: one event per chunk, the usage last.
fn stream() -> Vec<Bytes> {
    let mut chunks: Vec<Bytes> = (0..CHUNKS)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            ))
        })
        .collect();
    chunks.push(Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":500,\"total_tokens\":519}}\n\n",
    ));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

fn metering(c: &mut Criterion) {
    let chunks = stream();
    let estimates = Arc::new(Estimates::new());
    c.bench_function("unmetered: pass 500 chunks on", |b| {
        b.iter(|| {
            for chunk in &chunks {
                black_box(chunk.clone());
            }
        })
    });
    c.bench_function("meter: read 500 chunks and settle", |b| {
        b.iter(|| {
            let mut meter = Meter::new(
                http::StatusCode::OK,
                Some("text/event-stream"),
                None,
                Settlement {
                    metering: Metering::OpenAI,
                    tenant: Arc::from("bench/t"),
                    reserved: Metered::default(),
                    unreported: Metered::default(),
                    unreported_tokens: Default::default(),
                    free_without_usage: false,
                    pricing: None,
                    prices_tokens: false,
                    request_model: Some("gpt-4o".into()),
                    body_bytes: 100,
                    estimates: Arc::clone(&estimates),
                    settle: Box::new(|used| {
                        black_box(used);
                    }),
                },
            );
            for chunk in &chunks {
                meter.observe(chunk);
            }
            meter.finish(true);
        })
    });
    c.bench_function("filter: keep the usage chunk from 500 chunks", |b| {
        b.iter(|| {
            let mut filter = UsageChunkFilter::default();
            for chunk in &chunks {
                black_box(filter.pass(chunk.clone()));
            }
            black_box(filter.rest());
        })
    });
}

criterion_group!(benches, metering);
criterion_main!(benches);
