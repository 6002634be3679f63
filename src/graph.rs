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

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

use crate::config::{BUILTIN_VARIABLES, Config, ModelConfig, NodeConfig};
use crate::diag::{Diagnostic, Diagnostics, suggestion};
use crate::offline::{self, TaskOutput};
use crate::prompt::{
    Part, PromptError, PromptFile, Token, find_variable, tags, tokens, unclosed_block,
};
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

        // The fields of every json node, to check attributes like `{{ paraphrase.subject }}`.
        let json_fields: BTreeMap<&str, &[String]> = config
            .nodes
            .iter()
            .filter_map(|n| match &n.output {
                OutputKind::Json { fields } => Some((n.name.as_str(), fields.as_slice())),
                _ => None,
            })
            .collect();

        // Pass 1: read, compile and collect variables per node.
        let mut loaded: Vec<(NodeConfig, PromptFile, BTreeSet<String>)> = Vec::new();
        for node in &config.nodes {
            let display = config.root.join(&node.prompt);
            let prompt = match PromptFile::load(
                &display,
                &node.prompt,
                &config.resolve(&node.prompt),
                &config.root,
            ) {
                Ok(prompt) => prompt,
                Err(PromptError::Path(message)) => {
                    problems.push(
                        Diagnostic::at(
                            &config.path,
                            &config.source,
                            node.prompt_span.clone(),
                            message,
                        )
                        .with_key(format!("nodes.{}.prompt", node.name)),
                    );
                    continue;
                }
                Err(PromptError::Content(e)) => {
                    problems.extend(e);
                    continue;
                }
            };
            let mut variables = BTreeSet::new();
            let mut ok = true;
            for (part_name, part) in prompt.parts() {
                let name = template_name(&node.name, part_name);
                if let Err(e) = env.add_template_owned(name.clone(), part.text.clone()) {
                    problems.push(syntax_error(&prompt, part, part_name, &e));
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
                        // Underline the first use; the scanner can miss uses minijinja found
                        // (inside a macro call, say), and then the part's start stands in.
                        let span = find_variable(&part.text, &variable)
                            .map_or(0..0, |at| at..at + variable.len());
                        let hint = suggestion(&variable, known.iter().map(String::as_str));
                        problems.push(prompt.error_at_span(
                            part,
                            span,
                            format!(
                                "unknown variable `{variable}`{hint}; templates see the tables, the nodes and {}",
                                BUILTIN_VARIABLES.map(|b| format!("`{b}`")).join(", ")
                            ),
                        ));
                        ok = false;
                    }
                    variables.insert(variable);
                }
                let bodies = tags(&part.text)
                    .into_iter()
                    .map(|tag| (tag.body, tag.block));
                for (span, message) in check_code(&env, &part.text, bodies, &json_fields) {
                    problems.push(prompt.error_at_span(part, span, message));
                    ok = false;
                }
            }
            if let Some(when) = &node.when {
                let span = node.when_span.clone().unwrap_or_default();
                let key = format!("nodes.{}.when", node.name);
                let at = |message: String| {
                    Diagnostic::at(&config.path, &config.source, span.clone(), message)
                        .with_key(key.clone())
                };
                match when_variables(&mut env, &node.name, when) {
                    Err(e) => {
                        problems.push(at(format!("`when` does not parse: {}", error_detail(&e))));
                        ok = false;
                    }
                    Ok(used) => {
                        for variable in used {
                            if TEMPLATE_GLOBALS.contains(&variable.as_str()) {
                                continue;
                            }
                            if !known.contains(&variable) {
                                problems
                                    .push(at(format!("unknown variable `{variable}` in `when`")));
                                ok = false;
                            }
                            variables.insert(variable);
                        }
                        let whole = std::iter::once((0..when.len(), false));
                        for (_, message) in check_code(&env, when, whole, &json_fields) {
                            problems.push(at(format!("{message} in `when`")));
                            ok = false;
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
                problems.push(cycle_error(config, &loaded, &cycle));
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

/// Compiles the `when` condition of `node` and returns the variables it uses.
///
/// The condition is compiled as the expression it is, so that a parse error speaks of the
/// expression and not of a template around it. It is evaluated through a template, `{% if WHEN
/// %}1{% endif %}`, added to `env` here: a [`Graph`] cannot hold an `Expression`, which borrows the
/// environment.
fn when_variables(
    env: &mut Environment<'static>,
    node: &str,
    when: &str,
) -> Result<std::collections::HashSet<String>, minijinja::Error> {
    // minijinja's expression lexer takes `}}` for the end of a `{{ }}` tag and panics on any input
    // after it (minijinja 2.24), so that case is refused before it gets there. (In a condition,
    // `}}` can only close two dict literals, which `} }` does as well.)
    let tokens = tokens(when);
    // Any character after the `}}`, whitespace included, is "input after it".
    let double_brace_inside = tokens.windows(2).any(|w| {
        w[0].1 == Token::Punct('}')
            && w[1].1 == Token::Punct('}')
            && w[0].0.end == w[1].0.start
            && w[1].0.end < when.len()
    });
    if double_brace_inside {
        return Err(minijinja::Error::new(
            ErrorKind::SyntaxError,
            "`}}` ends a condition early; write `} }` to close two braces",
        ));
    }
    let variables = env
        .compile_expression_owned(when.to_string())?
        .undeclared_variables(false);
    // An expression that compiles also compiles inside `{% if %}`: `%}` is not an expression.
    env.add_template_owned(
        template_name(node, "when"),
        format!("{{% if {when} %}}1{{% endif %}}"),
    )?;
    Ok(variables)
}

/// minijinja's description of `error`, starting lowercase.
fn error_detail(error: &minijinja::Error) -> String {
    let mut detail = error
        .detail()
        .map_or_else(|| error.kind().to_string(), str::to_string);
    if let Some(first) = detail.get(..1) {
        let lower = first.to_lowercase();
        detail.replace_range(..1, &lower);
    }
    detail
}

fn template_error(error: &minijinja::Error) -> String {
    format!("template error: {}", error_detail(error))
}

/// A template that does not compile, located as precisely as minijinja allows: at the range it
/// reports, widened to the whole tag for an unknown statement, and at the opening tag when a block
/// is never closed (minijinja only notices at the end of the part, which is not where to fix it).
fn syntax_error(
    prompt: &PromptFile,
    part: &Part,
    part_name: &str,
    error: &minijinja::Error,
) -> Diagnostic {
    let detail = error.detail().unwrap_or_default();
    if detail == "unexpected end of input, expected end of block" {
        if let Some((tag, statement)) = unclosed_block(&part.text) {
            return prompt.error_at_span(
                part,
                tag.span,
                format!(
                    "template error: this `{{% {statement} %}}` is never closed; expected `{{% end{statement} %}}` before the end of the {part_name} part"
                ),
            );
        }
    }
    match error.range() {
        Some(range) => {
            let range = if detail.starts_with("unknown statement") {
                tags(&part.text)
                    .into_iter()
                    .find(|tag| tag.span.start <= range.start && range.end <= tag.span.end)
                    .map_or(range, |tag| tag.span)
            } else {
                range
            };
            prompt.error_at_span(part, range, template_error(error))
        }
        None => prompt.error_at(part, error.line(), None, template_error(error)),
    }
}

/// Problems minijinja only reports when a template is rendered, found at load time instead: filters
/// and tests the environment does not define, and attributes a json node does not have. (Rendering
/// every template once with sample values would miss branches not taken, so the code of every tag
/// is scanned instead.) Filter and test names are looked up in the environment itself, through
/// `State::apply_filter` / `perform_test` with no arguments: minijinja answers `UnknownFilter` /
/// `UnknownTest` exactly when the name is not registered, and a registered one fails on the missing
/// argument without doing anything, so the check can never disagree with rendering.
///
/// `bodies` are the byte ranges of `text` that hold code, each with whether it is a `{% %}` tag.
/// Returns (byte range in `text`, message).
fn check_code(
    env: &Environment<'_>,
    text: &str,
    bodies: impl IntoIterator<Item = (std::ops::Range<usize>, bool)>,
    json_fields: &BTreeMap<&str, &[String]>,
) -> Vec<(std::ops::Range<usize>, String)> {
    let state = env.empty_state();
    let mut problems = Vec::new();
    for (body, block) in bodies {
        let tokens = tokens(&text[body.clone()]);
        let at = |k: usize| body.start + tokens[k].0.start..body.start + tokens[k].0.end;
        let token = |k: Option<usize>| k.and_then(|k| tokens.get(k)).map(|(_, t)| *t);
        for (k, (_, current)) in tokens.iter().enumerate() {
            let Token::Ident(name) = *current else {
                continue;
            };
            let previous = token(k.checked_sub(1));
            let is_filter = previous == Some(Token::Punct('|'))
                || (block && k == 1 && token(Some(0)) == Some(Token::Ident("filter")));
            let is_test = (previous == Some(Token::Ident("is")) && name != "not")
                || (previous == Some(Token::Ident("not"))
                    && token(k.checked_sub(2)) == Some(Token::Ident("is")));
            if is_filter {
                if let Err(e) = state.apply_filter(name, &[]) {
                    if e.kind() == ErrorKind::UnknownFilter {
                        problems.push((at(k), format!("unknown filter `{name}`")));
                    }
                }
            } else if is_test {
                if let Err(e) = state.perform_test(name, &[]) {
                    if e.kind() == ErrorKind::UnknownTest {
                        problems.push((at(k), format!("unknown test `{name}`")));
                    }
                }
            } else if previous != Some(Token::Punct('.')) {
                let Some(fields) = json_fields.get(name) else {
                    continue;
                };
                // `node.field` or `node["field"]`.
                let field = match (token(Some(k + 1)), token(Some(k + 2)), token(Some(k + 3))) {
                    (Some(Token::Punct('.')), Some(Token::Ident(field)), _) => Some((k + 2, field)),
                    (Some(Token::Punct('[')), Some(Token::Str(field)), Some(Token::Punct(']'))) => {
                        Some((k + 2, field))
                    }
                    _ => None,
                };
                if let Some((f, field)) =
                    field.filter(|(_, field)| !fields.iter().any(|x| x == field))
                {
                    let hint = suggestion(field, fields.iter().map(String::as_str));
                    let list = fields
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let noun = if fields.len() == 1 { "field" } else { "fields" };
                    problems.push((
                        at(f),
                        format!(
                            "`{name}` has no field `{field}`{hint}; the json node `{name}` has the {noun} {list}"
                        ),
                    ));
                }
            }
        }
    }
    problems
}

/// The diagnostic for a cycle: a node that reads itself is told where; a longer cycle lists its
/// nodes in order.
fn cycle_error(
    config: &Config,
    loaded: &[(NodeConfig, PromptFile, BTreeSet<String>)],
    cycle: &[usize],
) -> Diagnostic {
    let (first, prompt, _) = &loaded[cycle[0]];
    let message = if cycle.len() == 1 {
        let name = &first.name;
        let used_at = prompt
            .parts()
            .find_map(|(_, part)| {
                find_variable(&part.text, name).map(|at| prompt.position(part, at))
            })
            .map_or_else(
                || "in its `when` condition".to_string(),
                |(line, column)| {
                    format!(
                        "`{{{{ {name} }}}}` in {}:{line}:{column}",
                        prompt.display.display()
                    )
                },
            );
        format!("the node `{name}` uses its own output ({used_at}); a node cannot read itself")
    } else {
        let names: Vec<&str> = cycle.iter().map(|i| loaded[*i].0.name.as_str()).collect();
        let mut path = names.join(" -> ");
        path.push_str(&format!(" -> {}", names[0]));
        format!(
            "the nodes {} form a cycle: {path} (each uses the next)",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Diagnostic::at(
        &config.path,
        &config.source,
        first.prompt_span.clone(),
        message,
    )
    .with_key(format!("nodes.{}", first.name))
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
