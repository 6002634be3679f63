//! `[samplers.NAME]`: checking per-ticket values into [`ValueSpec`]s.
//!
//! Kinds and their keys: `person` (none), `datetime` (`from`, `to`, `timezone`), `integer` (`min`,
//! `max`), `id` (`format`: `#` a digit, `?` a capital letter), `choice` (`values`). A key of
//! another kind, a missing key, an empty range, an unknown time zone or a name that a table, a node
//! or a built-in variable already uses is refused where it is written.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone};
use toml::Spanned;

use super::check::Checker;
use super::raw::{OrderedMap, RawSampler};
use super::{BUILTIN_VARIABLES, NodeConfig};
use crate::sampling::{Table, ValueKind, ValueSpec, Zone};

const KINDS: [&str; 5] = ["person", "datetime", "integer", "id", "choice"];

impl Checker<'_> {
    pub(super) fn samplers(
        &mut self,
        samplers: &OrderedMap<Spanned<RawSampler>>,
        tables: &[Table],
        nodes: &[NodeConfig],
    ) -> Vec<ValueSpec> {
        let mut out = Vec::new();
        for (name, raw) in &samplers.0 {
            let key = format!("samplers.{}", name.get_ref());
            if !self.identifier(name, &key) {
                continue;
            }
            let taken = if BUILTIN_VARIABLES.contains(&name.get_ref().as_str()) {
                Some("a built-in variable")
            } else if tables.iter().any(|t| &t.name == name.get_ref()) {
                Some("a table")
            } else if nodes.iter().any(|n| &n.name == name.get_ref()) {
                Some("a node")
            } else {
                None
            };
            if let Some(what) = taken {
                self.error(
                    name.span(),
                    key,
                    format!(
                        "`{}` is also {what}; templates could not tell them apart",
                        name.get_ref()
                    ),
                );
                continue;
            }
            if let Some(kind) = self.sampler_kind(raw, &key) {
                out.push(ValueSpec {
                    name: name.get_ref().clone(),
                    kind,
                });
            }
        }
        out
    }

    fn sampler_kind(&mut self, raw: &Spanned<RawSampler>, key: &str) -> Option<ValueKind> {
        let sampler = raw.get_ref();
        let Some(kind) = &sampler.kind else {
            self.error(
                raw.span(),
                key,
                format!(
                    "a sampler needs a `kind`: one of {}",
                    crate::diag::backticked(KINDS)
                ),
            );
            return None;
        };
        let allowed: &[&str] = match kind.get_ref().as_str() {
            "person" => &[],
            "datetime" => &["from", "to", "timezone"],
            "integer" => &["min", "max"],
            "id" => &["format"],
            "choice" => &["values"],
            other => {
                let hint = crate::diag::suggestion(other, KINDS.iter().copied());
                self.error(
                    kind.span(),
                    format!("{key}.kind"),
                    format!(
                        "`{other}` is not a sampler kind{hint}; use one of {}",
                        crate::diag::backticked(KINDS)
                    ),
                );
                return None;
            }
        };
        let present = [
            ("from", sampler.from.as_ref().map(Spanned::span)),
            ("to", sampler.to.as_ref().map(Spanned::span)),
            ("timezone", sampler.timezone.as_ref().map(Spanned::span)),
            ("min", sampler.min.as_ref().map(Spanned::span)),
            ("max", sampler.max.as_ref().map(Spanned::span)),
            ("format", sampler.format.as_ref().map(Spanned::span)),
            ("values", sampler.values.as_ref().map(Spanned::span)),
        ];
        let mut ok = true;
        for (name, span) in present {
            if let Some(span) = span.filter(|_| !allowed.contains(&name)) {
                self.error(
                    span,
                    format!("{key}.{name}"),
                    format!("`{name}` does not apply to `{}` samplers", kind.get_ref()),
                );
                ok = false;
            }
        }
        let missing = |name: &str| format!("`{}` samplers need `{name}`", kind.get_ref());
        let value = match kind.get_ref().as_str() {
            "person" => Some(ValueKind::Person),
            "datetime" => self.datetime(sampler, raw.span(), key),
            "integer" => match (&sampler.min, &sampler.max) {
                (Some(min), Some(max)) if min.get_ref() > max.get_ref() => {
                    self.error(
                        max.span(),
                        format!("{key}.max"),
                        format!(
                            "`max` ({}) is below `min` ({})",
                            max.get_ref(),
                            min.get_ref()
                        ),
                    );
                    None
                }
                (Some(min), Some(max)) => Some(ValueKind::Integer {
                    min: *min.get_ref(),
                    max: *max.get_ref(),
                }),
                (None, _) => {
                    self.error(raw.span(), key, missing("min"));
                    None
                }
                (_, None) => {
                    self.error(raw.span(), key, missing("max"));
                    None
                }
            },
            "id" => match &sampler.format {
                Some(format) if !format.get_ref().contains(['#', '?']) => {
                    self.error(
                        format.span(),
                        format!("{key}.format"),
                        "the format has no `#` (a digit) or `?` (a capital letter): every ticket would get the same id",
                    );
                    None
                }
                Some(format) => Some(ValueKind::Id {
                    format: format.get_ref().clone(),
                }),
                None => {
                    self.error(raw.span(), key, missing("format"));
                    None
                }
            },
            _ => match &sampler.values {
                Some(values) if values.get_ref().is_empty() => {
                    self.error(values.span(), format!("{key}.values"), "`values` is empty");
                    None
                }
                Some(values) => Some(ValueKind::Choice {
                    values: values.get_ref().clone(),
                }),
                None => {
                    self.error(raw.span(), key, missing("values"));
                    None
                }
            },
        };
        value.filter(|_| ok)
    }

    fn datetime(
        &mut self,
        sampler: &RawSampler,
        whole: std::ops::Range<usize>,
        key: &str,
    ) -> Option<ValueKind> {
        let zone = match &sampler.timezone {
            None => Zone::Utc,
            Some(name) if name.get_ref() == "UTC" => Zone::Utc,
            Some(name) => match chrono_tz::Tz::from_str(name.get_ref()) {
                Ok(tz) => Zone::Named(tz),
                Err(_) => {
                    self.error(
                        name.span(),
                        format!("{key}.timezone"),
                        format!(
                            "`{}` is not a time zone; use an IANA name such as \"Europe/Berlin\" or \"America/Sao_Paulo\", or \"UTC\"",
                            name.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        let mut moment = |value: &Option<Spanned<toml::Value>>, name: &str| -> Option<i64> {
            let Some(value) = value else {
                self.error(
                    whole.clone(),
                    key,
                    format!("`datetime` samplers need `{name}`"),
                );
                return None;
            };
            let text = match value.get_ref() {
                toml::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let parsed = parse_moment(&text, zone);
            if parsed.is_none() {
                self.error(
                    value.span(),
                    format!("{key}.{name}"),
                    format!(
                        "`{text}` is not a date or time; write \"2025-01-31\", \"2025-01-31T08:30:00\" (in the sampler's time zone) or \"2025-01-31T08:30:00+01:00\""
                    ),
                );
            }
            parsed
        };
        let from = moment(&sampler.from, "from");
        let to = moment(&sampler.to, "to");
        let (from, to) = (from?, to?);
        if from > to {
            let span = sampler.to.as_ref().map_or(whole, Spanned::span);
            self.error(span, format!("{key}.to"), "`to` is before `from`");
            return None;
        }
        Some(ValueKind::DateTime { from, to, zone })
    }
}

/// Unix seconds of an RFC 3339 time, or of a date or local time in `zone`.
fn parse_moment(text: &str, zone: Zone) -> Option<i64> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp());
    }
    let local = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    match zone {
        Zone::Utc => Some(local.and_utc().timestamp()),
        // The earliest of an ambiguous local time (the hour repeated when clocks go back).
        Zone::Named(tz) => tz
            .from_local_datetime(&local)
            .earliest()
            .map(|at| at.timestamp()),
    }
}
