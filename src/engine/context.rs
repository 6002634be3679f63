//! What a ticket's templates see: built-ins, table categories, sampled values, and the outputs of
//! the nodes run so far, kept as template values (for minijinja) and as JSON (the offline model's
//! structured inputs).

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectExt, ObjectRepr};

use crate::config::Config;
use crate::sampling::TicketSample;
use crate::value::NodeOutput;

/// The variables a ticket's templates see, kept twice in step: as template values (for
/// minijinja) and as JSON (the offline model's structured inputs).
pub(crate) struct TicketContext {
    template: Arc<Variables>,
    json: BTreeMap<String, serde_json::Value>,
}

/// The template variables, shared with the templates that render over them: a node's templates
/// see the map as it is when the node runs, without a copy of it per node. The next node's
/// output is added once those templates are done, so the map is then not shared and is changed
/// in place.
#[derive(Debug, Clone, Default)]
struct Variables(BTreeMap<String, minijinja::Value>);

impl Object for Variables {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        self.0.get(key.as_str()?).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| {
            Box::new(this.0.keys().map(|k| minijinja::Value::from(k.as_str())))
        })
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

impl TicketContext {
    /// The variables every template sees before any node runs: built-ins, table categories and
    /// sampled values.
    pub(crate) fn new(config: &Config, sample: &TicketSample) -> TicketContext {
        let mut context = TicketContext {
            template: Arc::default(),
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
        self.variables()
            .insert(name.to_string(), minijinja::Value::from(value.as_str()));
        self.json
            .insert(name.to_string(), serde_json::Value::String(value));
    }

    /// A node's output, under the node's name.
    pub(crate) fn set_output(&mut self, node: &str, output: &NodeOutput) {
        self.variables()
            .insert(node.to_string(), output.to_template_value());
        self.json.insert(node.to_string(), output.to_json());
    }

    /// A node skipped by its condition: `none` in templates, `null` for the offline model.
    pub(crate) fn set_skipped(&mut self, node: &str) {
        self.variables()
            .insert(node.to_string(), minijinja::Value::from(()));
        self.json.insert(node.to_string(), serde_json::Value::Null);
    }

    /// The variables, to change: copied first only if a template value still shares them.
    fn variables(&mut self) -> &mut BTreeMap<String, minijinja::Value> {
        &mut Arc::make_mut(&mut self.template).0
    }

    /// The context as templates render it: the variables as they are now (later nodes add to
    /// the context, not to this value).
    pub(crate) fn template_value(&self) -> minijinja::Value {
        minijinja::Value::from_dyn_object(self.template.clone())
    }

    pub(crate) fn json(&self, name: &str) -> Option<&serde_json::Value> {
        self.json.get(name)
    }
}
