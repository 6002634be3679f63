//! Money: prices, what a response cost, budgets and currencies.
//!
//! This module owns the price table (built in, as data in `data/prices.toml`, overridable per model
//! in dataset.toml), turning normalised token usage into USD, the budget ledger that reserves a
//! call's worst case before it is issued, and currency conversion. It does not read usage from
//! providers (adapters normalise it: input tokens include cached ones) and does not decide when to
//! call (the engine asks the ledger). The invariants: a model with no price costs *unknown*, never
//! zero; and the ledger never lets spent + reserved exceed a budget, so a build cannot overspend
//! even with many calls in flight.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

const BUILT_IN: &str = include_str!("../data/prices.toml");

/// Token counts of one response, normalised across providers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub(crate) input_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    pub(crate) cached_input_tokens: u64,
    pub(crate) output_tokens: u64,
    /// The part of `output_tokens` spent on hidden reasoning.
    pub(crate) reasoning_tokens: u64,
    /// True when the counts are estimates (the offline model), not reported by a provider.
    pub(crate) estimated: bool,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Price {
    pub(crate) input: f64,
    /// Input tokens served from the provider's prompt cache; `input` when not given.
    pub(crate) cached_input: Option<f64>,
    pub(crate) output: f64,
    pub(crate) batch_input: Option<f64>,
    pub(crate) batch_output: Option<f64>,
}

/// A price and where it came from, recorded with each artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceEntry {
    pub(crate) price: Price,
    /// `built-in 2026-11-01`, `dataset.toml`, or `offline (free)`.
    pub(crate) source: String,
}

impl PriceEntry {
    /// What `usage` costs at this price, in USD. Input tokens include cached ones (the providers'
    /// adapters normalise them so), so cached tokens are taken out of the full-price share.
    pub(crate) fn cost(&self, usage: &Usage) -> f64 {
        let p = &self.price;
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        (fresh as f64 * p.input
            + cached as f64 * p.cached_input.unwrap_or(p.input)
            + usage.output_tokens as f64 * p.output)
            / 1_000_000.0
    }

    /// What `usage` costs at this price's batch rates (a batch API's answer); the usual rates
    /// where the table has no batch price.
    pub(crate) fn batch_cost(&self, usage: &Usage) -> f64 {
        let p = &self.price;
        match (p.batch_input, p.batch_output) {
            (Some(input), Some(output)) => {
                (usage.input_tokens as f64 * input + usage.output_tokens as f64 * output)
                    / 1_000_000.0
            }
            _ => self.cost(usage),
        }
    }

    /// The most a call can cost: its input at full price and `max_output` output tokens.
    pub(crate) fn worst_case(&self, input_tokens: u64, max_output: u64) -> f64 {
        (input_tokens as f64 * self.price.input + max_output as f64 * self.price.output)
            / 1_000_000.0
    }

    pub(crate) fn free() -> PriceEntry {
        PriceEntry {
            price: Price {
                input: 0.0,
                cached_input: Some(0.0),
                output: 0.0,
                batch_input: None,
                batch_output: None,
            },
            source: "offline (free)".to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct BuiltIn {
    taken: String,
    models: BTreeMap<String, Price>,
    rates: BTreeMap<String, toml::Value>,
}

fn built_in() -> &'static BuiltIn {
    static TABLE: std::sync::LazyLock<BuiltIn> = std::sync::LazyLock::new(|| {
        // Invariant: the table is compiled in and `the_built_in_table_parses` covers it.
        toml::from_str(BUILT_IN).expect("data/prices.toml is valid")
    });
    &TABLE
}

/// The date the built-in prices and rates were taken.
pub(crate) fn prices_taken() -> &'static str {
    &built_in().taken
}

/// The price of `model` at `provider`: dataset.toml's override first, then the built-in table
/// ("provider/model", then the model name alone). `None` when nothing is known. (The offline
/// model is free: `config::ModelConfig::price` says so before asking here.)
pub(crate) fn price_for(
    provider: &str,
    model: &str,
    overrides: &BTreeMap<String, Price>,
) -> Option<PriceEntry> {
    if let Some(price) = overrides
        .get(model)
        .or_else(|| overrides.get(&format!("{provider}/{model}")))
    {
        return Some(PriceEntry {
            price: *price,
            source: "dataset.toml".to_string(),
        });
    }
    let table = built_in();
    let price = table
        .models
        .get(&format!("{provider}/{model}"))
        .or_else(|| {
            table
                .models
                .iter()
                .find(|(key, _)| key.split_once('/').is_some_and(|(_, name)| name == model))
                .map(|(_, price)| price)
        })?;
    Some(PriceEntry {
        price: *price,
        source: format!("built-in {}", table.taken),
    })
}

/// Units of `currency` per US dollar: dataset.toml's rate first, then the built-in one.
pub(crate) fn rate(currency: &str, overrides: &BTreeMap<String, f64>) -> Option<f64> {
    overrides.get(currency).copied().or_else(|| {
        built_in()
            .rates
            .get(currency)
            .and_then(toml::Value::as_float)
    })
}

/// Currency codes with a built-in rate.
pub(crate) fn known_currencies() -> Vec<&'static str> {
    built_in()
        .rates
        .iter()
        .filter(|(_, v)| v.is_float())
        .map(|(k, _)| k.as_str())
        .collect()
}

/// `$0.001234 (EUR 0.001061)` for the listed currencies.
pub(crate) fn format_money(
    usd: Option<f64>,
    currencies: &[String],
    rates: &BTreeMap<String, f64>,
) -> String {
    let Some(usd) = usd else {
        return "unknown".to_string();
    };
    let mut parts = Vec::new();
    for currency in currencies {
        match (currency.as_str(), rate(currency, rates)) {
            ("USD", _) => parts.push(format!("${usd:.6}")),
            (code, Some(rate)) => parts.push(format!("{code} {:.6}", usd * rate)),
            (code, None) => parts.push(format!("{code} ?")),
        }
    }
    if parts.is_empty() {
        parts.push(format!("${usd:.6}"));
    }
    parts.join(" / ")
}

/// Why a call may not be issued.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "the build budget of ${budget:.6} would be exceeded: ${spent:.6} spent, ${reserved:.6} reserved by calls in flight, this call may cost up to ${call:.6}"
    )]
    Budget {
        budget: f64,
        spent: f64,
        reserved: f64,
        call: f64,
    },
    #[error(
        "node `{node}`'s max_cost of ${limit:.6} would be exceeded: ${spent:.6} spent, ${reserved:.6} reserved, this call may cost up to ${call:.6}"
    )]
    NodeLimit {
        node: String,
        limit: f64,
        spent: f64,
        reserved: f64,
        call: f64,
    },
    #[error(
        "a call cost ${cost:.6}, over error_per_call (${limit:.6}); no further calls are issued"
    )]
    PerCall { cost: f64, limit: f64 },
}

/// Money spent and reserved during one build, against its limits.
pub(crate) struct Ledger {
    budget: Option<f64>,
    node_limits: Vec<Option<f64>>,
    names: Vec<String>,
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    spent: f64,
    reserved: f64,
    node_spent: Vec<f64>,
    node_reserved: Vec<f64>,
    /// Set once a limit stopped the build: no call is issued after it.
    stopped: Option<Refusal>,
}

/// A reservation held while a call is in flight; settle it with what the call cost.
#[derive(Debug)]
pub(crate) struct Reservation {
    node: usize,
    amount: f64,
}

impl Ledger {
    pub(crate) fn new(budget: Option<f64>, nodes: Vec<(String, Option<f64>)>) -> Ledger {
        let count = nodes.len();
        Ledger {
            budget,
            names: nodes.iter().map(|(n, _)| n.clone()).collect(),
            node_limits: nodes.into_iter().map(|(_, l)| l).collect(),
            state: Mutex::new(LedgerState {
                node_spent: vec![0.0; count],
                node_reserved: vec![0.0; count],
                ..LedgerState::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        // A poisoned ledger only means a task panicked mid-update of plain numbers.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `worst_case` USD for a call of `node`, or refuses when it could cross a limit.
    pub(crate) fn reserve(&self, node: usize, worst_case: f64) -> Result<Reservation, Refusal> {
        let mut state = self.lock();
        if let Some(refusal) = &state.stopped {
            return Err(refusal.clone());
        }
        if let Some(budget) = self.budget {
            if state.spent + state.reserved + worst_case > budget {
                let refusal = Refusal::Budget {
                    budget,
                    spent: state.spent,
                    reserved: state.reserved,
                    call: worst_case,
                };
                state.stopped = Some(refusal.clone());
                return Err(refusal);
            }
        }
        if let Some(limit) = self.node_limits[node] {
            if state.node_spent[node] + state.node_reserved[node] + worst_case > limit {
                // Only this node stops; other nodes may still run.
                return Err(Refusal::NodeLimit {
                    node: self.names[node].clone(),
                    limit,
                    spent: state.node_spent[node],
                    reserved: state.node_reserved[node],
                    call: worst_case,
                });
            }
        }
        state.reserved += worst_case;
        state.node_reserved[node] += worst_case;
        Ok(Reservation {
            node,
            amount: worst_case,
        })
    }

    /// Replaces a reservation by what the call actually cost (zero when it failed before a reply).
    pub(crate) fn settle(&self, reservation: Reservation, cost: f64) {
        let mut state = self.lock();
        state.reserved -= reservation.amount;
        state.node_reserved[reservation.node] -= reservation.amount;
        state.spent += cost;
        state.node_spent[reservation.node] += cost;
    }

    /// Counts `cost` as spent by `node` without a reservation: an answer already paid for (a
    /// batch's), which no limit may refuse.
    pub(crate) fn spend(&self, node: usize, cost: f64) {
        let mut state = self.lock();
        state.spent += cost;
        state.node_spent[node] += cost;
    }

    /// Stops every further call (a call went over `error_per_call`).
    pub(crate) fn stop(&self, refusal: Refusal) {
        self.lock().stopped.get_or_insert(refusal);
    }

    /// Why the build was stopped, if it was.
    pub(crate) fn stopped(&self) -> Option<Refusal> {
        self.lock().stopped.clone()
    }

    #[cfg(test)]
    pub(crate) fn spent(&self) -> f64 {
        self.lock().spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_table_parses() {
        assert!(!prices_taken().is_empty());
        let mini = price_for("openai", "gpt-4o-mini", &BTreeMap::new()).unwrap();
        assert_eq!(mini.price.input, 0.15);
        assert_eq!(rate("USD", &BTreeMap::new()), Some(1.0));
        assert!(known_currencies().contains(&"EUR"));
    }

    #[test]
    fn cached_tokens_are_not_counted_twice() {
        let entry = PriceEntry {
            price: Price {
                input: 2.0,
                cached_input: Some(1.0),
                output: 8.0,
                batch_input: None,
                batch_output: None,
            },
            source: "test".into(),
        };
        let usage = Usage {
            input_tokens: 1_000_000,
            cached_input_tokens: 400_000,
            output_tokens: 500_000,
            reasoning_tokens: 100_000,
            estimated: false,
        };
        // 600k fresh at $2 + 400k cached at $1 + 500k output at $8.
        assert!((entry.cost(&usage) - (1.2 + 0.4 + 4.0)).abs() < 1e-9);
    }

    #[test]
    fn overrides_win_and_unknown_models_have_no_price() {
        let overrides = BTreeMap::from([(
            "gpt-4o-mini".to_string(),
            Price {
                input: 1.0,
                cached_input: None,
                output: 2.0,
                batch_input: None,
                batch_output: None,
            },
        )]);
        let entry = price_for("openai", "gpt-4o-mini", &overrides).unwrap();
        assert_eq!(entry.source, "dataset.toml");
        assert!(price_for("openai-compatible", "my-local-model", &BTreeMap::new()).is_none());
    }

    #[test]
    fn the_ledger_never_lets_reservations_cross_the_budget() {
        let ledger = Ledger::new(Some(1.0), vec![("a".into(), None), ("b".into(), Some(0.3))]);
        let r1 = ledger.reserve(0, 0.6).unwrap();
        assert!(matches!(
            ledger.reserve(1, 0.5),
            Err(Refusal::Budget { .. })
        ));
        // Once refused, the build is stopped: nothing more is issued.
        assert!(ledger.reserve(1, 0.01).is_err());
        ledger.settle(r1, 0.2);
        assert!((ledger.spent() - 0.2).abs() < 1e-12);
        let node_limited = Ledger::new(None, vec![("a".into(), None), ("b".into(), Some(0.3))]);
        let r = node_limited.reserve(1, 0.2).unwrap();
        assert!(matches!(
            node_limited.reserve(1, 0.2),
            Err(Refusal::NodeLimit { .. })
        ));
        assert!(node_limited.reserve(0, 5.0).is_ok());
        node_limited.settle(r, 0.1);
    }

    #[test]
    fn money_shows_every_currency() {
        let rates = BTreeMap::from([("EUR".to_string(), 0.5)]);
        let text = format_money(Some(2.0), &["USD".to_string(), "EUR".to_string()], &rates);
        assert_eq!(text, "$2.000000 / EUR 1.000000");
        assert_eq!(format_money(None, &["USD".to_string()], &rates), "unknown");
    }
}
