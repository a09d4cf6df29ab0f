//! Token usage as providers report it, by type, and what it costs under a plan's prices.

use rust_decimal::Decimal;
use tollgate_crds::snapshot::{ModelPrice, Pricing};

use crate::quota::Metered;

/// Tokens of one call, by how they are priced. Providers count differently (OpenAI includes
/// cached tokens in `prompt_tokens`, Anthropic reports them beside `input_tokens`; OpenAI
/// includes reasoning in `completion_tokens`, Gemini reports thoughts beside the candidates):
/// the readers in [`super::formats`] normalize to this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens neither read from nor written to a cache.
    pub input: u64,
    /// Prompt tokens read from a cache.
    pub cache_read: u64,
    /// Prompt tokens written to a cache.
    pub cache_write: u64,
    /// Output tokens other than reasoning.
    pub output: u64,
    /// Reasoning (thinking) tokens.
    pub reasoning: u64,
}

impl From<Usage> for tollgate_crds::stream::TokenCounts {
    fn from(u: Usage) -> Self {
        Self {
            input: u.input,
            cached_input: u.cache_read,
            cache_write_input: u.cache_write,
            output: u.output,
            reasoning: u.reasoning,
        }
    }
}

impl Usage {
    /// All prompt tokens (InputTokens quotas).
    pub fn input_tokens(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }

    /// All output tokens (OutputTokens quotas).
    pub fn output_tokens(&self) -> u64 {
        self.output.saturating_add(self.reasoning)
    }

    /// Priced with `price` (`None`: the model has no price, the tokens cost nothing here and the
    /// caller decides what that means), plus the plan's per-request price.
    pub fn metered(&self, pricing: Option<&Pricing>, price: Option<&ModelPrice>) -> Metered {
        let per_request = pricing.and_then(|p| p.per_request).unwrap_or(Decimal::ZERO);
        Metered {
            input_tokens: self.input_tokens(),
            output_tokens: self.output_tokens(),
            cost: per_request + price.map_or(Decimal::ZERO, |p| self.token_cost(p)),
            outside: 0,
        }
    }

    /// What the tokens cost at `price`.
    pub fn token_cost(&self, price: &ModelPrice) -> Decimal {
        let input = price.input_per_million_tokens;
        let output = price.output_per_million_tokens;
        let parts = [
            (self.input, input),
            (
                self.cache_read,
                price.cached_input_per_million_tokens.unwrap_or(input),
            ),
            (
                self.cache_write,
                price.cache_write_input_per_million_tokens.unwrap_or(input),
            ),
            (self.output, output),
            (
                self.reasoning,
                price.reasoning_per_million_tokens.unwrap_or(output),
            ),
        ];
        let total: Decimal = parts
            .iter()
            .map(|(tokens, per_million)| Decimal::from(*tokens) * per_million)
            .sum();
        total / Decimal::from(1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(cached: Option<&str>, reasoning: Option<&str>) -> ModelPrice {
        ModelPrice {
            model: "m".into(),
            input_per_million_tokens: "2".parse().expect("decimal"),
            output_per_million_tokens: "8".parse().expect("decimal"),
            cached_input_per_million_tokens: cached.map(|c| c.parse().expect("decimal")),
            cache_write_input_per_million_tokens: None,
            reasoning_per_million_tokens: reasoning.map(|c| c.parse().expect("decimal")),
        }
    }

    #[test]
    fn each_token_type_has_its_price_or_falls_back_to_input_and_output() {
        let usage = Usage {
            input: 1_000_000,
            cache_read: 1_000_000,
            cache_write: 1_000_000,
            output: 1_000_000,
            reasoning: 1_000_000,
        };
        // Without the optional prices: 3 x 2 + 2 x 8.
        assert_eq!(usage.token_cost(&price(None, None)), Decimal::from(22));
        // Cached reads at 0.5, reasoning at 10: 2 + 0.5 + 2 + 8 + 10.
        assert_eq!(
            usage.token_cost(&price(Some("0.5"), Some("10"))),
            "22.5".parse::<Decimal>().expect("decimal")
        );
        assert_eq!(
            (usage.input_tokens(), usage.output_tokens()),
            (3_000_000, 2_000_000)
        );
    }
}
