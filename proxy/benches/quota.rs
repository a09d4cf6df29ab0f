//! The cost of the quota check itself: one admission (quotas + rate limits, check and charge) for
//! one tenant, and round-robin over 10,000 tenants (cache misses, map lookups).
//! `cargo bench -p tollgate-proxy --bench quota`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_crds::synthetic::synthetic;
use tollgate_proxy::config::ProxyConfig;
use tollgate_proxy::pipeline::auth::KeyMemo;
use tollgate_proxy::quota::{CounterStore, MemoryStore, Metered, Subject};

fn admission(c: &mut Criterion) {
    let world = synthetic("bench", 10_000, 1_000);
    let compiled = tollgate_crds::compile(&world.objects());
    let config = ProxyConfig::build(1, compiled.snapshot);
    let tenants: Vec<_> = config.tenants_by_key.values().cloned().collect();
    let subjects: Vec<_> = tenants
        .iter()
        .filter_map(|t| t.plan.clone().map(|p| (t.clone(), p)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store = MemoryStore::new();
    let now = jiff::Timestamp::now();

    let (tenant, plan) = &subjects[0];
    c.bench_function("admit/one tenant", |b| {
        b.iter(|| {
            runtime.block_on(store.admit(
                Subject {
                    tenant: &tenant.id,
                    plan,
                },
                black_box(now),
                &Metered::default(),
            ))
        })
    });

    let mut i = 0;
    c.bench_function("admit/10k tenants round-robin", |b| {
        b.iter(|| {
            let (tenant, plan) = &subjects[i % subjects.len()];
            i += 1;
            runtime.block_on(store.admit(
                Subject {
                    tenant: &tenant.id,
                    plan,
                },
                black_box(now),
                &Metered::default(),
            ))
        })
    });

    let key = sha2_key("key-tenant-04242", &KeyMemo::default());
    c.bench_function("authenticate/key digest + lookup (10k tenants)", |b| {
        b.iter(|| {
            let fresh = KeyMemo::default();
            config
                .tenants_by_key
                .contains_key(&sha2_key(black_box("key-tenant-04242"), &fresh))
        })
    });
    // A keep-alive connection presents the same key again: its digest is remembered.
    let connection = KeyMemo::default();
    c.bench_function("authenticate/repeated key + lookup (10k tenants)", |b| {
        b.iter(|| {
            config
                .tenants_by_key
                .contains_key(&sha2_key(black_box("key-tenant-04242"), &connection))
        })
    });
    assert!(config.tenants_by_key.contains_key(&key));
}

fn sha2_key(key: &str, memo: &KeyMemo) -> [u8; 32] {
    // As Tollgate's HTTP/1.1 engine hands the header over: a line, not a map.
    let mut headers = tollgate_proxy::http1::raw_headers::RawHeadersBuilder::with_capacity(64);
    headers.push(b"X-Api-Key", key.as_bytes());
    let headers = headers.finish();
    tollgate_proxy::pipeline::auth::presented_key(
        tollgate_proxy::http1::client_headers::ClientHeaders::Raw(&headers),
        memo,
    )
    .ok()
    .flatten()
    .unwrap_or_default()
}

criterion_group!(benches, admission);
criterion_main!(benches);
