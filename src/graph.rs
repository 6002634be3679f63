//! The node graph: templates compiled, dependencies inferred, order fixed.
//!
//! This module owns turning checked config nodes and their prompt files into a [`Graph`]: it compiles
//! every template and `when` condition, infers each node's upstream nodes from the variables its
//! template and condition use, rejects unknown variables and cycles (with file, line and the nodes of
//! the cycle), checks that nodes served by the offline model ask for a task it knows, and renders
//! prompts for the engine. It does not call models or touch the cache. The invariant: a [`Graph`] lists
//! nodes in a dependency order, so when a node is rendered every variable it can use already has a
//! value (or `none` for a node skipped by its condition).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::config::{BUILTIN_VARIABLES, Config, ModelConfig, NodeConfig};
use crate::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::offline::{self, TaskOutput};
use crate::prompt::PromptFile;
use crate::value::OutputKind;

/// Functions minijinja defines globally; using them is not using a variable.
const TEMPLATE_GLOBALS: [&str; 4] = ["range", "dict", "debug", "namespace"];

/// One node, ready to render.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub config: NodeConfig,
    pub model: ModelConfig,
    /// The prompt file as shown to users.
    pub prompt_display: PathBuf,
    /// Indices (into [`Graph::nodes`]) of the nodes this one reads.
    pub upstream: Vec<usize>,
    /// Every variable the template and condition use.
    pub variables: BTreeSet<String>,
    pub has_system: bool,
    /// BLAKE3 of the prompt file's bytes: trace metadata, never key material.
    pub template_hash: String,
    /// For the offline model: the variables passed to it as structured inputs.
    pub offline_inputs: Vec<String>,
}

/// All nodes in dependency order, with their compiled templates.
pub struct Graph {
    env: Environment<'static>,
    pub nodes: Vec<Node>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph").field("nodes", &self.nodes).finish()
    }
}

fn template_name(node: &str, part: &str) -> String {
    format!("{node}/{part}")
}

impl Graph {
    pub fn load(config: &Config) -> Result<Graph, Diagnostics> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);

        let mut problems = Diagnostics::default();
        let mut known: BTreeSet<String> = BUILTIN_VARIABLES.iter().map(|s| s.to_string()).collect();
        known.extend(config.tables.iter().map(|t| t.name.clone()));
        known.extend(config.nodes.iter().map(|n| n.name.clone()));

        // Pass 1: read, compile and collect variables per node.
        let mut loaded: Vec<(NodeConfig, PromptFile, BTreeSet<String>)> = Vec::new();
        for node in &config.nodes {
            let display = config.root.join(&node.prompt);
            let prompt =
                match PromptFile::load(&display, &config.resolve(&node.prompt), &config.root) {
                    Ok(prompt) => prompt,
                    Err(e) => {
                        problems.extend(e);
                        continue;
                    }
                };
            let mut variables = BTreeSet::new();
            let mut ok = true;
            for (part_name, part) in prompt.parts() {
                let name = template_name(&node.name, part_name);
                if let Err(e) = env.add_template_owned(name.clone(), part.text.clone()) {
                    problems.push(prompt.error_at(part, e.line(), None, template_error(&e)));
                    ok = false;
                    continue;
                }
                // Invariant: the template was added just above.
                let template = env.get_template(&name).expect("template just added");
                for variable in template.undeclared_variables(false) {
                    if TEMPLATE_GLOBALS.contains(&variable.as_str()) {
                        continue;
                    }
                    if !known.contains(&variable) {
                        let (line, column) =
                            PromptFile::locate_variable(part, &variable).unwrap_or((1, 1));
                        let hint = did_you_mean(&variable, known.iter().map(String::as_str))
                            .map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"));
                        problems.push(prompt.error_at(
                            part,
                            Some(line),
                            Some(column),
                            format!(
                                "unknown variable `{variable}`{hint}; templates see the tables, the nodes and {}",
                                BUILTIN_VARIABLES.map(|b| format!("`{b}`")).join(", ")
                            ),
                        ));
                        ok = false;
                    }
                    variables.insert(variable);
                }
            }
            if let Some(when) = &node.when {
                let name = template_name(&node.name, "when");
                let source = format!("{{% if {when} %}}1{{% endif %}}");
                let span = node.when_span.clone().unwrap_or_default();
                match env.add_template_owned(name.clone(), source) {
                    Err(e) => {
                        problems.push(
                            Diagnostic::at(
                                &config.path,
                                &config.source,
                                span,
                                format!("`when` does not parse: {}", template_error(&e)),
                            )
                            .with_key(format!("nodes.{}.when", node.name)),
                        );
                        ok = false;
                    }
                    Ok(()) => {
                        let template = env.get_template(&name).expect("template just added");
                        for variable in template.undeclared_variables(false) {
                            if TEMPLATE_GLOBALS.contains(&variable.as_str()) {
                                continue;
                            }
                            if !known.contains(&variable) {
                                problems.push(
                                    Diagnostic::at(
                                        &config.path,
                                        &config.source,
                                        span.clone(),
                                        format!("unknown variable `{variable}` in `when`"),
                                    )
                                    .with_key(format!("nodes.{}.when", node.name)),
                                );
                                ok = false;
                            }
                            variables.insert(variable);
                        }
                    }
                }
            }
            if ok {
                loaded.push((node.clone(), prompt, variables));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        // Pass 2: order by dependencies.
        let order = match topological_order(&loaded) {
            Ok(order) => order,
            Err(cycle) => {
                let (first, _, _) = &loaded[cycle[0]];
                let names: Vec<&str> = cycle.iter().map(|i| loaded[*i].0.name.as_str()).collect();
                let mut path = names.join(" -> ");
                path.push_str(&format!(" -> {}", names[0]));
                problems.push(
                    Diagnostic::at(
                        &config.path,
                        &config.source,
                        first.prompt_span.clone(),
                        format!(
                            "the nodes {} form a cycle: {path} (each uses the next)",
                            names
                                .iter()
                                .map(|n| format!("`{n}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                    .with_key(format!("nodes.{}", first.name)),
                );
                return Err(problems);
            }
        };
        let position: BTreeMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(pos, i)| (loaded[*i].0.name.as_str(), pos))
            .collect();
        let mut nodes = Vec::new();
        for &i in &order {
            let (node, prompt, variables) = &loaded[i];
            let mut upstream: Vec<usize> = variables
                .iter()
                .filter_map(|v| position.get(v.as_str()).copied())
                .collect();
            upstream.sort_unstable();
            let model = config.model_of(node).clone();
            let offline_inputs = if model.provider == "offline" {
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
                variables: variables.clone(),
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

    /// Renders (system, user) for `node`.
    pub fn render(
        &self,
        node: &Node,
        context: &minijinja::Value,
    ) -> Result<(Option<String>, String), minijinja::Error> {
        let system = if node.has_system {
            let template = self
                .env
                .get_template(&template_name(&node.name, "system"))?;
            Some(template.render(context)?.trim().to_string())
        } else {
            None
        };
        let template = self.env.get_template(&template_name(&node.name, "user"))?;
        let user = template.render(context)?.trim().to_string();
        Ok((system, user))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

fn template_error(error: &minijinja::Error) -> String {
    let detail = error
        .detail()
        .map_or_else(|| error.kind().to_string(), str::to_string);
    let mut message = format!("template error: {detail}");
    if let Some(first) = message.get(..1) {
        let lower = first.to_lowercase();
        message.replace_range(..1, &lower);
    }
    message
}

/// Checks that the offline model can serve `node`; returns the variables to pass it.
fn check_offline(
    config: &Config,
    node: &NodeConfig,
    prompt: &PromptFile,
    variables: &BTreeSet<String>,
) -> Result<Vec<String>, Box<Diagnostic>> {
    let at_node = |message: String| {
        Box::new(
            Diagnostic::at(
                &config.path,
                &config.source,
                node.prompt_span.clone(),
                message,
            )
            .with_key(format!("nodes.{}", node.name)),
        )
    };
    let Some(spec) = offline::task_spec(&node.task) else {
        return Err(at_node(format!(
            "the offline model cannot write `{}`: it only serves the default pipeline ({}); set a real model for this node with `model = \"...\"` and a [models.NAME] table",
            node.task,
            offline::TASKS.join(", ")
        )));
    };
    let expected = match spec.output {
        TaskOutput::Text => OutputKind::Text,
        TaskOutput::List => OutputKind::List { min: 0, max: 0 },
        TaskOutput::Json(fields) => OutputKind::Json {
            fields: fields.iter().map(|f| f.to_string()).collect(),
        },
    };
    let kind_matches = match (&expected, &node.output) {
        (OutputKind::Json { fields: want }, OutputKind::Json { fields: have }) => {
            want.iter().all(|f| have.contains(f))
        }
        (a, b) => a.name() == b.name(),
    };
    if !kind_matches {
        let want = match &expected {
            OutputKind::Json { fields } => format!("`json` with fields {}", fields.join(", ")),
            other => format!("`{}`", other.name()),
        };
        return Err(at_node(format!(
            "the offline model's `{}` task writes {want}, but the node declares `{}`",
            node.task,
            node.output.name()
        )));
    }
    for required in spec.required {
        if !variables.contains(*required) {
            return Err(Box::new(Diagnostic::file(
                &prompt.display,
                format!(
                    "the offline model's `{}` task reads `{required}`; use `{{{{ {required} }}}}` in this template, or set a real model for node `{}`",
                    node.task, node.name
                ),
            )));
        }
    }
    Ok(spec
        .required
        .iter()
        .chain(spec.optional.iter())
        .filter(|v| variables.contains(**v))
        .map(|v| v.to_string())
        .collect())
}

/// Kahn's algorithm, ties broken by config order so the order is stable. On a cycle, returns the
/// nodes of one cycle in order.
fn topological_order(
    nodes: &[(NodeConfig, PromptFile, BTreeSet<String>)],
) -> Result<Vec<usize>, Vec<usize>> {
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (n, _, _))| (n.name.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|(_, _, vars)| {
            vars.iter()
                .filter_map(|v| index.get(v.as_str()).copied())
                .collect()
        })
        .collect();
    let mut remaining: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|i| remaining[*i] == 0).collect();
    let mut order = Vec::new();
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for (i, d) in deps.iter().enumerate() {
            let uses = d.iter().filter(|x| **x == next).count();
            if uses > 0 {
                remaining[i] -= uses;
                if remaining[i] == 0 {
                    ready.insert(i);
                }
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    // Walk from any stuck node along stuck dependencies until a node repeats.
    let stuck: BTreeSet<usize> = (0..nodes.len()).filter(|i| !order.contains(i)).collect();
    let mut path = Vec::new();
    let mut current = *stuck.first().unwrap_or(&0);
    loop {
        if let Some(pos) = path.iter().position(|p| *p == current) {
            return Err(path[pos..].to_vec());
        }
        path.push(current);
        current = deps[current]
            .iter()
            .copied()
            .find(|d| stuck.contains(d))
            .unwrap_or(current);
    }
}
