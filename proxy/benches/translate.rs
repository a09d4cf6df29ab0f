//! What translation costs: a Chat Completions call made an Anthropic Messages call (per request),
//! and an Anthropic stream of 500 text deltas made OpenAI chunks, or an OpenAI stream made
//! Anthropic events (per chunk), against passing the same chunks on untouched.
//! `cargo bench -p tollgate-proxy --bench translate`.

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use tollgate_crds::resources::Metering as Api;
use tollgate_proxy::llm::meter::Rewrite;
use tollgate_proxy::llm::translate::{self, Translator};

const CHUNKS: usize = 500;

/// An Anthropic stream as the API writes it: 500 text deltas between its start and its end.
fn anthropic_stream() -> Vec<Bytes> {
    let mut events = vec![Bytes::from_static(
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    )];
    events.extend((0..CHUNKS).map(|i| {
        Bytes::from(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" token{i}\"}}}}\n\n"
        ))
    }));
    events.push(Bytes::from_static(
        b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":500}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ));
    events
}

/// An OpenAI chat stream: 500 content chunks, the usage, `[DONE]`.
fn openai_stream() -> Vec<Bytes> {
    let mut chunks: Vec<Bytes> = (0..CHUNKS)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            ))
        })
        .collect();
    chunks.push(Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\ndata: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":500,\"total_tokens\":519}}\n\ndata: [DONE]\n\n",
    ));
    chunks
}

fn translation(c: &mut Criterion) {
    let call = match json!({"model": "gpt-4o", "max_completion_tokens": 1024, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Write a haiku about proxies."}]})
    {
        Value::Object(m) => m,
        _ => unreachable!("an object"),
    };
    let models = BTreeMap::from([("gpt-4o".to_owned(), "claude-sonnet-4-5".to_owned())]);
    c.bench_function("request: a chat call as an Anthropic call", |b| {
        b.iter(|| {
            black_box(
                translate::request(
                    Api::OpenAI,
                    Api::Anthropic,
                    "/v1/chat/completions",
                    black_box(&call),
                    &models,
                )
                .ok(),
            )
        })
    });
    let anthropic = anthropic_stream();
    let openai = openai_stream();
    c.bench_function("untranslated: pass 500 chunks on", |b| {
        b.iter(|| {
            for chunk in &anthropic {
                black_box(chunk.clone());
            }
        })
    });
    let run = |caller, backend, chunks: &[Bytes]| {
        let mut t = Translator::new(
            caller,
            backend,
            http::StatusCode::OK,
            Some("text/event-stream"),
            true,
        )
        .expect("a translation");
        for chunk in chunks {
            black_box(t.pass(chunk.clone()));
        }
        black_box(t.rest());
    };
    c.bench_function("stream: 500 Anthropic deltas as OpenAI chunks", |b| {
        b.iter(|| run(Api::OpenAI, Api::Anthropic, &anthropic))
    });
    c.bench_function("stream: 500 OpenAI chunks as Anthropic events", |b| {
        b.iter(|| run(Api::Anthropic, Api::OpenAI, &openai))
    });
}

criterion_group!(benches, translation);
criterion_main!(benches);
