//! What recent calls of each model used, so that a typical call reserves what calls like it use
//! rather than its worst case.
//!
//! Per model, the last [`WINDOW`] calls' output tokens and input tokens per request byte. A
//! reservation takes the largest of each (a cautious estimate: one long answer in the last 20
//! raises it). Kept per proxy: each learns from the calls it serves.

use std::collections::HashMap;

use parking_lot::RwLock;

/// Calls remembered per model.
pub const WINDOW: usize = 20;
/// Models remembered (further ones are estimated with the defaults).
const MAX_MODELS: usize = 4096;
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

/// Recent usage by model.
#[derive(Debug, Default)]
pub struct Estimates {
    models: RwLock<HashMap<String, Recent>>,
}

impl Estimates {
    /// Nothing learned yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most output tokens among the model's recent calls (`None`: no history).
    pub fn output(&self, model: &str) -> Option<u64> {
        let models = self.models.read();
        let recent = models.get(model)?;
        recent.outputs[..recent.len].iter().copied().max()
    }

    /// Input tokens per request byte for the model: the most among its recent calls.
    pub fn input_per_byte(&self, model: Option<&str>) -> f64 {
        let models = self.models.read();
        let Some(recent) = model.and_then(|m| models.get(m)) else {
            return DEFAULT_INPUT_PER_BYTE;
        };
        recent.input_per_byte[..recent.len]
            .iter()
            .copied()
            .fold(0.0, f64::max)
    }

    /// Remembers a call of `model` whose request had `body_bytes` and which used
    /// `input_tokens` and `output_tokens`.
    pub fn learn(&self, model: &str, body_bytes: usize, input_tokens: u64, output_tokens: u64) {
        let mut models = self.models.write();
        if models.len() >= MAX_MODELS && !models.contains_key(model) {
            return;
        }
        let recent = models.entry(model.to_owned()).or_default();
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
        assert_eq!(e.output("m"), None);
        assert_eq!(e.input_per_byte(Some("m")), DEFAULT_INPUT_PER_BYTE);
        e.learn("m", 400, 100, 30);
        e.learn("m", 400, 50, 90);
        assert_eq!(e.output("m"), Some(90));
        assert_eq!(e.input_per_byte(Some("m")), 0.25);
        // After WINDOW more calls, the long one is forgotten.
        for _ in 0..WINDOW {
            e.learn("m", 100, 10, 20);
        }
        assert_eq!(e.output("m"), Some(20));
        assert_eq!(e.input_per_byte(Some("m")), 0.1);
        assert_eq!(e.output("other"), None);
    }
}
