//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) as RFC 9651
//! Structured Field lists, one item per request-counted policy: each rate limit, then each quota
//! with metric Requests. For a calendar quota `w` is the current period's length in seconds.
//!
//! Everything but the numbers that change per request is rendered once per plan when the
//! configuration is applied ([`Template`]); a request only appends integers.

use bytes::{BufMut, Bytes};
use http::HeaderValue;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use tollgate_crds::snapshot::Plan;

use super::decision::LimitState;
use crate::http1::raw_headers::OwnLines;

/// A plan's header items, pre-rendered.
#[derive(Debug, Clone, Default)]
pub struct Template {
    /// By rate-limit index.
    rate_limits: Vec<Item>,
    /// Request-counted quotas, in plan order.
    quotas: Vec<Item>,
    /// Quotas served past their limit (`whenExhausted: Overage`): index, limit, sf-string name.
    overage: Vec<(usize, Decimal, Box<[u8]>)>,
}

/// Names a response's quotas that are past their limit and served as overage.
pub const OVERAGE_HEADER: &str = "tollgate-overage";

#[derive(Debug, Clone)]
struct Item {
    /// Index into the plan's `rate_limits` or `quotas`.
    index: usize,
    /// `"name";q=N;w=` — the window length follows.
    policy: Box<[u8]>,
    /// A rate limit's fixed window in seconds; quotas take the current period's length.
    window: Option<u64>,
    /// `"name";r=` — remaining, then `;t=` and the reset, follow.
    state: Box<[u8]>,
}

impl Template {
    /// Renders the fixed parts for `plan`; `request_quotas` are the indexes of its Requests quotas.
    pub fn new(plan: &Plan, request_quotas: &[usize]) -> Self {
        let rate_limits = plan
            .rate_limits
            .iter()
            .enumerate()
            .map(|(index, rl)| {
                Item::new(
                    index,
                    &rl.name,
                    rl.requests,
                    Some((rl.window_ms / 1000).max(1)),
                )
            })
            .collect();
        let quotas = request_quotas
            .iter()
            .filter_map(|&index| {
                let q = plan.quotas.get(index)?;
                Some(Item::new(index, &q.name, whole(&q.limit), None))
            })
            .collect();
        let overage = plan
            .quotas
            .iter()
            .enumerate()
            .filter(|(_, q)| q.overage)
            .map(|(i, q)| (i, q.limit, sf_string(&q.name).into_bytes().into()))
            .collect();
        Self {
            rate_limits,
            quotas,
            overage,
        }
    }

    /// The overage quotas that counted this request (`outside`: the quotas that did not, as
    /// [`super::Metered::outside`]) and are past their limit.
    fn past_limit<'a>(
        &'a self,
        quotas: &'a [LimitState],
        outside: u16,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.overage
            .iter()
            .filter(move |(i, limit, _)| {
                let counted = *i >= 16 || outside & (1 << i) == 0;
                counted && quotas.get(*i).is_some_and(|s| s.used > *limit)
            })
            .map(|(_, _, name)| &name[..])
    }

    /// Whether a quota that counted this request is past its limit, served as overage.
    fn in_overage(&self, quotas: &[LimitState], outside: u16) -> bool {
        self.past_limit(quotas, outside).next().is_some()
    }

    /// `Tollgate-Overage`'s value: the quotas past their limit (an sf-list of names).
    fn write_overage(&self, quotas: &[LimitState], outside: u16, out: &mut impl BufMut) {
        let mut first = true;
        for name in self.past_limit(quotas, outside) {
            if !std::mem::take(&mut first) {
                out.put_slice(b", ");
            }
            out.put_slice(name);
        }
    }

    /// The `Tollgate-Overage` header, when a quota that counted the request is past its limit.
    pub fn overage_header(&self, quotas: &[LimitState], outside: u16) -> Option<HeaderValue> {
        if !self.in_overage(quotas, outside) {
            return None;
        }
        let mut out = Vec::with_capacity(64);
        self.write_overage(quotas, outside, &mut out);
        HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
    }

    /// The two header values, or `None` when the plan has no request-counted limit.
    pub fn headers(
        &self,
        rate_limits: &[LimitState],
        quotas: &[LimitState],
    ) -> Option<(HeaderValue, HeaderValue)> {
        // Both values in one buffer (policy, then state), sliced: one allocation for the two.
        let mut out = Vec::with_capacity(256);
        self.write_policy(rate_limits, quotas, &mut out);
        if out.is_empty() {
            return None;
        }
        let split = out.len();
        self.write_state(rate_limits, quotas, &mut out);
        let both = Bytes::from(out);
        Some((
            HeaderValue::from_maybe_shared(both.slice(..split)).ok()?,
            HeaderValue::from_maybe_shared(both.slice(split..)).ok()?,
        ))
    }

    /// The two headers as lines, for a response whose headers are written as bytes (a relayed
    /// backend response; see `raw_headers`), or `None` when the plan has no request-counted limit.
    pub fn lines(
        &self,
        rate_limits: &[LimitState],
        quotas: &[LimitState],
        outside: u16,
    ) -> Option<OwnLines> {
        let names: &'static [&'static str] = match (
            self.has_items(rate_limits, quotas),
            self.in_overage(quotas, outside),
        ) {
            (true, false) => &["ratelimit-policy", "ratelimit"],
            (true, true) => &["ratelimit-policy", "ratelimit", OVERAGE_HEADER],
            (false, true) => &[OVERAGE_HEADER],
            (false, false) => return None,
        };
        Some(OwnLines::new(names, 256, |i, out| match names[i] {
            "ratelimit-policy" => self.write_policy(rate_limits, quotas, out),
            "ratelimit" => self.write_state(rate_limits, quotas, out),
            _ => self.write_overage(quotas, outside, out),
        }))
    }

    fn has_items(&self, rate_limits: &[LimitState], quotas: &[LimitState]) -> bool {
        let mut any = false;
        self.each(rate_limits, quotas, |_, _, _| any = true);
        any
    }

    /// `RateLimit-Policy`'s value.
    fn write_policy(
        &self,
        rate_limits: &[LimitState],
        quotas: &[LimitState],
        out: &mut impl BufMut,
    ) {
        let mut n = itoa::Buffer::new();
        self.write_list(rate_limits, quotas, out, |out, item, window, _| {
            out.put_slice(&item.policy);
            out.put_slice(n.format(window).as_bytes());
        });
    }

    /// `RateLimit`'s value.
    fn write_state(
        &self,
        rate_limits: &[LimitState],
        quotas: &[LimitState],
        out: &mut impl BufMut,
    ) {
        let mut n = itoa::Buffer::new();
        self.write_list(rate_limits, quotas, out, |out, item, _, s| {
            out.put_slice(&item.state);
            out.put_slice(n.format(whole(&s.remaining)).as_bytes());
            out.put_slice(b";t=");
            out.put_slice(n.format(s.reset_seconds).as_bytes());
        });
    }

    /// An sf-list: `write_item` for each item, separated by `, `.
    fn write_list<B: BufMut>(
        &self,
        rate_limits: &[LimitState],
        quotas: &[LimitState],
        out: &mut B,
        mut write_item: impl FnMut(&mut B, &Item, u64, &LimitState),
    ) {
        let mut first = true;
        self.each(rate_limits, quotas, |item, window, s| {
            if !std::mem::take(&mut first) {
                out.put_slice(b", ");
            }
            write_item(out, item, window, s);
        });
    }

    /// Calls `f` with each item that has a state, its window length in seconds, and the state.
    fn each(
        &self,
        rate_limits: &[LimitState],
        quotas: &[LimitState],
        mut f: impl FnMut(&Item, u64, &LimitState),
    ) {
        for s in rate_limits {
            if let Some(item) = self.rate_limits.get(s.index) {
                f(item, item.window.unwrap_or(1), s);
            }
        }
        for item in &self.quotas {
            if let Some(s) = quotas.get(item.index) {
                f(item, s.window.map_or(0, |w| w.length_seconds()), s);
            }
        }
    }
}

impl Item {
    fn new(index: usize, name: &str, limit: u64, window: Option<u64>) -> Self {
        let key = sf_string(name);
        Self {
            index,
            policy: format!("{key};q={limit};w=").into_bytes().into(),
            window,
            state: format!("{key};r=").into_bytes().into(),
        }
    }
}

/// An RFC 9651 sf-string: quoted, `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn whole(d: &Decimal) -> u64 {
    d.trunc().to_u64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_escaped() {
        assert_eq!(sf_string("per-second"), "\"per-second\"");
        assert_eq!(sf_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
