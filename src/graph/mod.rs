//! The node graph: templates compiled, dependencies inferred, order fixed.
//!
//! This module owns turning checked config nodes and their prompt files into a [`Graph`] and
//! rendering prompts for the engine. Its parts: `compile` reads each prompt, compiles every
//! template and `when` condition, and rejects unknown variables, cycles (with file, line and the
//! nodes of the cycle) and offline nodes asking for a task the offline model does not know; here,
//! each node's upstream nodes are inferred from the variables it uses and the nodes are ordered;
//! [`render`] draws the graph as text, Graphviz DOT or Mermaid. It does not call models or touch
//! the cache. The invariant: a [`Graph`] lists nodes in a dependency order, so when a node is
//! rendered every variable it can use already has a value (or `none` for a node skipped by its
//! condition).

mod compile;
mod fills;
pub(crate) mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::config::{Config, ModelConfig, NodeConfig};
use crate::diag::Diagnostics;
use compile::{Loaded, Scope, check_offline, compile_node, cycle_error, topological_order};
pub use fills::Fills;

/// One node, ready to render.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) name: String,
    pub(crate) config: NodeConfig,
    pub(crate) model: ModelConfig,
    /// The prompt file as shown to users.
    pub(crate) prompt_display: PathBuf,
    /// Indices (into [`Graph::nodes`]) of the nodes this one reads.
    pub(crate) upstream: Vec<usize>,
    pub(crate) has_system: bool,
    /// BLAKE3 of the prompt file's bytes: trace metadata, never key material.
    pub(crate) template_hash: String,
    /// For the offline model: the variables passed to it as structured inputs.
    pub(crate) offline_inputs: Vec<String>,
}

/// All nodes in dependency order, with their compiled templates. Cloning it is cheap next to
/// loading it again: the compiled templates are shared.
#[derive(Clone)]
pub struct Graph {
    env: Environment<'static>,
    pub(crate) nodes: Vec<Node>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph").field("nodes", &self.nodes).finish()
    }
}

/// The name of a node's template part in the environment: `topic/user`.
fn template_name(node: &str, part: &str) -> String {
    format!("{node}/{part}")
}

/// A node's prompt rendered for one ticket: each message trimmed of leading and trailing
/// whitespace, with the byte ranges the values filled (what the cache stores apart from the
/// template's text).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub system: Option<(String, Fills)>,
    pub user: (String, Fills),
}

impl Graph {
    pub fn load(config: &Config) -> Result<Graph, Diagnostics> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_formatter(fills::noting_formatter);

        // Pass 1: read, compile and collect variables per node.
        let mut problems = Diagnostics::default();
        let scope = Scope::of(config);
        let loaded: Vec<Loaded> = config
            .nodes
            .iter()
            .filter_map(|node| compile_node(&mut env, config, node, &scope, &mut problems))
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }

        // Pass 2: order by dependencies.
        let order = match topological_order(&loaded) {
            Ok(order) => order,
            Err(cycle) => {
                problems.push(cycle_error(config, &loaded, &cycle));
                return Err(problems);
            }
        };
        let position: BTreeMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(pos, i)| (loaded[*i].node.name.as_str(), pos))
            .collect();
        let mut nodes = Vec::new();
        for &i in &order {
            let Loaded {
                node,
                prompt,
                variables,
            } = &loaded[i];
            let mut upstream: Vec<usize> = variables
                .iter()
                .filter_map(|v| position.get(v.as_str()).copied())
                .collect();
            upstream.sort_unstable();
            let model = config.model_of(node).clone();
            let offline_inputs = if model.provider.is_offline() {
                match check_offline(config, node, prompt, variables) {
                    Ok(inputs) => inputs,
                    Err(d) => {
                        problems.push(*d);
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            nodes.push(Node {
                name: node.name.clone(),
                config: node.clone(),
                model,
                prompt_display: prompt.display.clone(),
                upstream,
                has_system: prompt.system.is_some(),
                template_hash: blake3::hash(prompt.source.as_bytes()).to_hex().to_string(),
                offline_inputs,
            });
        }
        problems.into_result(Graph { env, nodes })
    }

    /// Whether `node` runs for the ticket whose variables are `context`.
    pub fn should_run(
        &self,
        node: &Node,
        context: &minijinja::Value,
    ) -> Result<bool, minijinja::Error> {
        if node.config.when.is_none() {
            return Ok(true);
        }
        let template = self.env.get_template(&template_name(&node.name, "when"))?;
        Ok(template.render(context)? == "1")
    }

    /// Renders the system message (if any) and the user message of `node`.
    pub fn render(
        &self,
        node: &Node,
        context: &minijinja::Value,
    ) -> Result<Rendered, minijinja::Error> {
        let system = if node.has_system {
            let template = self
                .env
                .get_template(&template_name(&node.name, "system"))?;
            Some(fills::render_with_fills(&template, context)?)
        } else {
            None
        };
        let template = self.env.get_template(&template_name(&node.name, "user"))?;
        let user = fills::render_with_fills(&template, context)?;
        Ok(Rendered { system, user })
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    const CONFIG: &str = r#"
[dataset]
rows = 2

[tables.queue]
Billing = 1

[nodes.topic]
prompt = "prompts/topic.jinja"

[nodes.paraphrase]
prompt = "prompts/paraphrase.jinja"
output = "json"
fields = ["subject", "body"]

[nodes.subject]
prompt = "prompts/subject.jinja"
"#;

    /// Loads a project whose `subject` prompt is `subject` and whose `subject` node has `extra`
    /// keys; returns the problems, one headline each, with the project folder left out.
    fn problems(subject: &str, extra: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("prompts")).unwrap();
        let write = |name: &str, text: &str| std::fs::write(root.join(name), text).unwrap();
        write(
            "prompts/topic.jinja",
            "--- user\nName an issue for {{ queue }}.\n",
        );
        write(
            "prompts/paraphrase.jinja",
            "--- user\nRewrite {{ topic }}.\n",
        );
        write("prompts/subject.jinja", subject);
        let source = format!("{CONFIG}{extra}\n");
        let config = Config::parse(&root.join("dataset.toml"), source, &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let prefix = format!("{}/", root.display());
        match Graph::load(&config) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .0
                .iter()
                .map(|d| d.headline().replace(&prefix, ""))
                .collect(),
        }
    }

    #[test]
    fn a_valid_project_loads() {
        let subject = "--- user\n{% if topic is defined and paraphrase is not none %}{{ topic | upper }}{% endif %}\n{% filter lower %}{{ paraphrase.subject }} {{ paraphrase['body'] }}{% endfilter %}\n";
        assert_eq!(
            problems(subject, "when = \"language != 'EN'\""),
            Vec::<String>::new()
        );
    }

    #[test]
    fn unknown_filters_and_tests_are_refused_at_load() {
        let subject = "--- user\n{{ topic | shout }}\n{% filter whisper %}x{% endfilter %}\n{% if topic is loud %}y{% endif %}\n";
        assert_eq!(
            problems(subject, ""),
            [
                "prompts/subject.jinja:2:12: unknown filter `shout`",
                "prompts/subject.jinja:3:11: unknown filter `whisper`",
                "prompts/subject.jinja:4:16: unknown test `loud`",
            ]
        );
    }

    #[test]
    fn json_fields_are_checked_with_a_suggestion() {
        let subject = "--- user\nAbout {{ topic }}: {{ paraphrase['subjet'] }}\n";
        assert_eq!(
            problems(subject, ""),
            [
                "prompts/subject.jinja:2:34: `paraphrase` has no field `subjet` (did you mean `subject`?); the json node `paraphrase` has the fields `subject`, `body`"
            ]
        );
    }

    #[test]
    fn when_is_checked_as_an_expression() {
        let subject = "--- user\nAbout {{ topic }}.\n";
        let key = "dataset.toml:18:8: `nodes.subject.when`";
        assert_eq!(
            problems(subject, "when = \"topic | shout\""),
            [format!("{key}: unknown filter `shout` in `when`")]
        );
        assert_eq!(
            problems(subject, "when = \"language == 'EN' }} x\""),
            [format!(
                "{key}: `when` does not parse: `}}}}` ends a condition early; write `}} }}` to close two braces"
            )]
        );
        // Found by tests/fuzz.rs: `}}` followed by nothing but a space also reached the panic.
        for when in ["}} ", "language == 'EN' }}\t"] {
            assert_eq!(
                problems(subject, &format!("when = \"{when}\"")),
                [format!(
                    "{key}: `when` does not parse: `}}}}` ends a condition early; write `}} }}` to close two braces"
                )]
            );
        }
        assert!(
            problems(subject, "when = \"{'a': {'b': 1}}\"").is_empty(),
            "`}}` closing the condition itself is fine"
        );
        assert_eq!(
            problems(subject, "when = \"language == 'EN' %} x\""),
            [format!("{key}: `when` does not parse: unexpected `}}`")]
        );
        assert_eq!(
            problems(subject, "when = \"subject != none\""),
            [
                "dataset.toml:17:10: `nodes.subject`: the node `subject` uses its own output (in its `when` condition); a node cannot read itself"
            ]
        );
    }

    #[test]
    fn an_unclosed_block_is_reported_at_its_opening_tag() {
        let subject = "--- system\nYou write.\n--- user\n{% for t in [topic] %}\n{% if t %}{{ t }}{% endif %}\n";
        assert_eq!(
            problems(subject, ""),
            [
                "prompts/subject.jinja:4:1: template error: this `{% for %}` is never closed; expected `{% endfor %}` before the end of the user part"
            ]
        );
    }
}
