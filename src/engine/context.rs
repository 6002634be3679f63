//! What a ticket's templates see: built-ins, table categories, sampled values, and the outputs of
//! the nodes run so far, kept as template values (for minijinja) and as JSON (the offline model's
//! structured inputs).

use std::collections::BTreeMap;

use crate::config::Config;
use crate::sampling::TicketSample;
use crate::value::NodeOutput;

/// The variables a ticket's templates see, kept twice in step: as template values (for
/// minijinja) and as JSON (the offline model's structured inputs).
pub(crate) struct TicketContext {
    template: BTreeMap<String, minijinja::Value>,
    json: BTreeMap<String, serde_json::Value>,
}

impl TicketContext {
    /// The variables every template sees before any node runs: built-ins, table categories and
    /// sampled values.
    pub(crate) fn new(config: &Config, sample: &TicketSample) -> TicketContext {
        let mut context = TicketContext {
            template: BTreeMap::new(),
            json: BTreeMap::new(),
        };
        let builtins = [
            ("ticket_id", sample.ticket_id.to_string()),
            ("language", sample.language.code().to_string()),
            ("language_name", sample.language.name().to_string()),
        ];
        for (name, value) in builtins {
            context.set_text(name, value);
        }
        for (table, category) in config.tables.iter().zip(&sample.categories) {
            context.set_text(&table.name, category.clone());
        }
        for (sampler, value) in config.samplers.iter().zip(&sample.values) {
            context.set_text(&sampler.name, value.text.clone());
        }
        if let (Some(input), Some((_, cells))) = (&config.input, &sample.input) {
            for (column, value) in input.rows.columns().iter().zip(cells) {
                context.set_text(column, value.clone());
            }
        }
        context
    }

    fn set_text(&mut self, name: &str, value: String) {
        self.template
            .insert(name.to_string(), minijinja::Value::from(value.as_str()));
        self.json
            .insert(name.to_string(), serde_json::Value::String(value));
    }

    /// A node's output, under the node's name.
    pub(crate) fn set_output(&mut self, node: &str, output: &NodeOutput) {
        self.template
            .insert(node.to_string(), output.to_template_value());
        self.json.insert(node.to_string(), output.to_json());
    }

    /// A node skipped by its condition: `none` in templates, `null` for the offline model.
    pub(crate) fn set_skipped(&mut self, node: &str) {
        self.template
            .insert(node.to_string(), minijinja::Value::from(()));
        self.json.insert(node.to_string(), serde_json::Value::Null);
    }

    /// The context as templates render it (a copy: later nodes add to this one).
    pub(crate) fn template_value(&self) -> minijinja::Value {
        minijinja::Value::from(self.template.clone())
    }

    pub(crate) fn json(&self, name: &str) -> Option<&serde_json::Value> {
        self.json.get(name)
    }
}
