//! `[profile.NAME]`: overrides merged into the file before it is checked, like Cargo profiles.
//!
//! This module owns applying a profile: only what the profile sets changes. The invariant: a
//! profile's own values are checked under the profile's keys, and a value that fails is reported
//! once and not applied (so it is not reported again for every model it would have reached).

use super::check::Checker;
use super::raw::{MODEL_KEYS, RawDataset, RawFile, merge_model};
use crate::diag::{Diagnostic, did_you_mean};

impl Checker<'_> {
    /// Merges `[profile.NAME]` into the raw file, like Cargo profiles: only what the profile sets
    /// changes. The profile's own values are checked here, under the profile's keys; a value that
    /// fails is reported once and not applied (so it is not reported again for every model).
    pub(super) fn apply_profile(
        &mut self,
        raw: &mut RawFile,
        dataset: &mut RawDataset,
        profile: Option<&str>,
    ) -> Option<String> {
        let name = profile?;
        let Some(index) = raw.profile.0.iter().position(|(k, _)| k.get_ref() == name) else {
            let known: Vec<&str> = raw
                .profile
                .0
                .iter()
                .map(|(k, _)| k.get_ref().as_str())
                .collect();
            let hint = match did_you_mean(name, known.iter().copied()) {
                Some(s) => format!(" (did you mean `{s}`?)"),
                None if known.is_empty() => "; the file defines no [profile.*] table".to_string(),
                None => format!("; defined: {}", known.join(", ")),
            };
            self.problems.push(Diagnostic::file(
                self.path,
                format!("unknown profile `{name}`{hint}"),
            ));
            return Some(name.to_string());
        };
        let prefix = format!("profile.{name}");
        let profile = &raw.profile.0[index].1;
        let profile = profile.get_ref();
        if let Some(rows) = &profile.rows {
            if self.positive(rows, &format!("{prefix}.rows")).is_some() {
                dataset.rows = Some(rows.clone());
                self.renamed
                    .insert("dataset.rows".to_string(), format!("{prefix}.rows"));
            }
        }
        if let Some(concurrency) = &profile.concurrency {
            if self
                .positive(concurrency, &format!("{prefix}.concurrency"))
                .is_some()
            {
                dataset.concurrency = Some(concurrency.clone());
                self.renamed.insert(
                    "dataset.concurrency".to_string(),
                    format!("{prefix}.concurrency"),
                );
            }
        }
        if let Some(max_tokens) = &profile.max_tokens {
            if self
                .positive(max_tokens, &format!("{prefix}.max_tokens"))
                .is_some()
            {
                for (model_name, model) in &mut raw.models.0 {
                    model.get_mut().max_tokens = Some(max_tokens.clone());
                    self.renamed.insert(
                        format!("models.{}.max_tokens", model_name.get_ref()),
                        format!("{prefix}.max_tokens"),
                    );
                }
            }
        }
        for (model_name, changes) in &profile.models.0 {
            let base = format!("models.{}", model_name.get_ref());
            let written = format!("{prefix}.models.{}", model_name.get_ref());
            let taken = match raw
                .models
                .0
                .iter_mut()
                .find(|(k, _)| k.get_ref() == model_name.get_ref())
            {
                Some((_, model)) => merge_model(model.get_mut(), changes.get_ref()),
                None => {
                    // The profile defines the model: every problem with it is in the profile.
                    raw.models.0.push((model_name.clone(), changes.clone()));
                    self.renamed.insert(base.clone(), written.clone());
                    MODEL_KEYS.to_vec()
                }
            };
            for field in taken {
                self.renamed
                    .insert(format!("{base}.{field}"), format!("{written}.{field}"));
            }
        }
        Some(name.to_string())
    }
}
