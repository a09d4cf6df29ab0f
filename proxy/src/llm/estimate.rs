//! What a tenant's recent calls of each model used, so that a typical call reserves what calls
//! like it use rather than its worst case.
//!
//! Per (tenant, model), the last [`WINDOW`] calls' output tokens and input tokens per request
//! byte. A reservation takes the largest of each (a cautious estimate: one long answer in the
//! last 20 raises it). Per tenant: one tenant's short calls never lower what another's reserve.
//! Kept per proxy: each learns from the calls it serves.

use std::collections::HashMap;

use parking_lot::RwLock;

/// Calls remembered per model.
pub const WINDOW: usize = 20;
/// (tenant, model) pairs remembered (further ones are estimated with the defaults): about
/// 400 bytes each.
const MAX_ENTRIES: usize = 65_536;
/// Models remembered per tenant: a tenant naming made-up models cannot take the others' room.
const MAX_MODELS_PER_TENANT: usize = 32;
/// Longest model name remembered.
pub const MAX_MODEL_NAME: usize = 256;
/// Input tokens per request byte assumed for a model with no history: English text and JSON run
/// near 0.25, other scripts higher; a cautious start that the first answer corrects.
pub const DEFAULT_INPUT_PER_BYTE: f64 = 0.5;

#[derive(Debug, Default)]
struct Recent {
    outputs: [u64; WINDOW],
    input_per_byte: [f64; WINDOW],
    len: usize,
    next: usize,
}

/// Recent usage by tenant, then model.
#[derive(Debug, Default)]
pub struct Estimates {
    tenants: RwLock<HashMap<String, HashMap<String, Recent>>>,
    entries: std::sync::atomic::AtomicUsize,
}

impl Estimates {
    /// Nothing learned yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most output tokens among the tenant's recent calls of the model (`None`: no history).
    pub fn output(&self, tenant: &str, model: &str) -> Option<u64> {
        let tenants = self.tenants.read();
        let recent = tenants.get(tenant)?.get(model)?;
        recent.outputs[..recent.len].iter().copied().max()
    }

    /// Input tokens per request byte for the tenant's calls of the model: the most among its
    /// recent calls.
    pub fn input_per_byte(&self, tenant: &str, model: Option<&str>) -> f64 {
        let tenants = self.tenants.read();
        let recent = model.and_then(|m| tenants.get(tenant)?.get(m));
        let Some(recent) = recent.filter(|r| r.len > 0) else {
            return DEFAULT_INPUT_PER_BYTE;
        };
        recent.input_per_byte[..recent.len]
            .iter()
            .copied()
            .fold(0.0, f64::max)
    }

    /// Remembers `tenant`'s call of `model` whose request had `body_bytes` and which used
    /// `input_tokens` and `output_tokens`.
    pub fn learn(
        &self,
        tenant: &str,
        model: &str,
        body_bytes: usize,
        input_tokens: u64,
        output_tokens: u64,
    ) {
        use std::sync::atomic::Ordering;
        if model.len() > MAX_MODEL_NAME {
            return;
        }
        let mut tenants = self.tenants.write();
        let models = tenants.get(tenant);
        let known = models.is_some_and(|m| m.contains_key(model));
        let full = models.is_some_and(|m| m.len() >= MAX_MODELS_PER_TENANT)
            || self.entries.load(Ordering::Relaxed) >= MAX_ENTRIES;
        if !known && full {
            return;
        }
        if !known {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
        let recent = tenants
            .entry(tenant.to_owned())
            .or_default()
            .entry(model.to_owned())
            .or_default();
        let i = recent.next;
        recent.outputs[i] = output_tokens;
        // A bodiless call (or one whose input is not in its body) teaches nothing about bytes.
        recent.input_per_byte[i] = if body_bytes > 0 {
            (input_tokens as f64 / body_bytes as f64).min(4.0)
        } else {
            0.0
        };
        recent.next = (i + 1) % WINDOW;
        recent.len = (recent.len + 1).min(WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_of_the_recent_calls_is_the_estimate() {
        let e = Estimates::new();
        assert_eq!(e.output("t", "m"), None);
        assert_eq!(e.input_per_byte("t", Some("m")), DEFAULT_INPUT_PER_BYTE);
        e.learn("t", "m", 400, 100, 30);
        e.learn("t", "m", 400, 50, 90);
        assert_eq!(e.output("t", "m"), Some(90));
        assert_eq!(e.input_per_byte("t", Some("m")), 0.25);
        // After WINDOW more calls, the long one is forgotten.
        for _ in 0..WINDOW {
            e.learn("t", "m", 100, 10, 20);
        }
        assert_eq!(e.output("t", "m"), Some(20));
        assert_eq!(e.input_per_byte("t", Some("m")), 0.1);
        assert_eq!(e.output("t", "other"), None);
        assert_eq!(e.output("another tenant", "m"), None);
        // A tenant naming ever new models fills only its own room.
        for i in 0..100 {
            e.learn("t", &format!("made-up-{i}"), 100, 10, 1);
        }
        assert_eq!(e.output("t", "made-up-99"), None);
        e.learn("u", "m", 100, 10, 7);
        assert_eq!(e.output("u", "m"), Some(7));
    }
}
