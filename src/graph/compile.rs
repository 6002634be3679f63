//! Compiling a node: its prompt file read, its templates and condition compiled and checked.
//!
//! This module owns every check a template gets before a build: syntax (with the line and a caret),
//! unknown variables (with "did you mean"), attributes of json nodes that do not exist, code that
//! cannot work (a filter or test minijinja does not know), dependency cycles, and offline nodes
//! whose task or inputs the offline model does not know. The invariant: a node that compiles here
//! renders for every ticket whose upstream outputs have their declared kinds.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::{Environment, ErrorKind};

use super::template_name;
use crate::config::{BUILTIN_VARIABLES, Config, NodeConfig};
use crate::diag::{Diagnostic, Diagnostics, suggestion};
use crate::offline::{self, TaskOutput};
use crate::prompt::{
    Part, PromptError, PromptFile, Token, find_variable, tags, tokens, unclosed_block,
};
use crate::value::OutputKind;

/// Functions minijinja defines globally; using them is not using a variable.
const TEMPLATE_GLOBALS: [&str; 4] = ["range", "dict", "debug", "namespace"];

/// A node whose prompt and condition compiled, with every variable they use.
pub(super) struct Loaded {
    pub(super) node: NodeConfig,
    pub(super) prompt: PromptFile,
    pub(super) variables: BTreeSet<String>,
}

/// What templates may name: the variables that exist, and the fields of every json node (to
/// check attributes like `{{ paraphrase.subject }}`).
pub(super) struct Scope<'a> {
    pub(super) known: BTreeSet<String>,
    pub(super) json_fields: BTreeMap<&'a str, &'a [String]>,
    /// Where the variables come from, for messages about one that does not exist.
    pub(super) sources: String,
}

impl Scope<'_> {
    pub(super) fn of(config: &Config) -> Scope<'_> {
        let mut known: BTreeSet<String> = BUILTIN_VARIABLES.iter().map(|s| s.to_string()).collect();
        known.extend(config.tables.iter().map(|t| t.name.clone()));
        known.extend(config.samplers.iter().map(|v| v.name.clone()));
        if let Some(input) = &config.input {
            known.extend(input.rows.columns().iter().cloned());
        }
        known.extend(config.nodes.iter().map(|n| n.name.clone()));
        let json_fields = config
            .nodes
            .iter()
            .filter_map(|n| match &n.output {
                OutputKind::Json { fields } => Some((n.name.as_str(), fields.as_slice())),
                _ => None,
            })
            .collect();
        let input = config
            .input
            .as_ref()
            .map(|i| format!("the columns of `{}`, ", i.display))
            .unwrap_or_default();
        let sources = format!(
            "templates see the tables, the samplers, {input}the nodes and {}",
            crate::diag::backticked(BUILTIN_VARIABLES)
        );
        Scope {
            known,
            json_fields,
            sources,
        }
    }
}

/// Reads `node`'s prompt file, adds its templates (and its condition) to `env`, and checks every
/// variable they use; `None` when there were problems (pushed to `problems`).
pub(super) fn compile_node(
    env: &mut Environment<'static>,
    config: &Config,
    node: &NodeConfig,
    scope: &Scope<'_>,
    problems: &mut Diagnostics,
) -> Option<Loaded> {
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
            return None;
        }
        Err(PromptError::Content(e)) => {
            problems.extend(e);
            return None;
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
            if !scope.known.contains(&variable) {
                // Underline the first use; the scanner can miss uses minijinja found
                // (inside a macro call, say), and then the part's start stands in.
                let span =
                    find_variable(&part.text, &variable).map_or(0..0, |at| at..at + variable.len());
                let hint = suggestion(&variable, scope.known.iter().map(String::as_str));
                problems.push(prompt.error_at_span(
                    part,
                    span,
                    format!("unknown variable `{variable}`{hint}; {}", scope.sources),
                ));
                ok = false;
            }
            variables.insert(variable);
        }
        let bodies = tags(&part.text)
            .into_iter()
            .map(|tag| (tag.body, tag.block));
        for (span, message) in check_code(env, &part.text, bodies, &scope.json_fields) {
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
        match when_variables(env, &node.name, when) {
            Err(e) => {
                problems.push(at(format!("`when` does not parse: {}", error_detail(&e))));
                ok = false;
            }
            Ok(used) => {
                for variable in used {
                    if TEMPLATE_GLOBALS.contains(&variable.as_str()) {
                        continue;
                    }
                    if !scope.known.contains(&variable) {
                        problems.push(at(format!("unknown variable `{variable}` in `when`")));
                        ok = false;
                    }
                    variables.insert(variable);
                }
                let whole = std::iter::once((0..when.len(), false));
                for (_, message) in check_code(env, when, whole, &scope.json_fields) {
                    problems.push(at(format!("{message} in `when`")));
                    ok = false;
                }
            }
        }
    }
    ok.then(|| Loaded {
        node: node.clone(),
        prompt,
        variables,
    })
}

/// Compiles the `when` condition of `node` and returns the variables it uses.
///
/// The condition is compiled as the expression it is, so that a parse error speaks of the
/// expression and not of a template around it. It is evaluated through a template, `{% if WHEN
/// %}1{% endif %}`, added to `env` here: a [`Graph`](super::Graph) cannot hold an `Expression`, which borrows the
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
                    let list = crate::diag::backticked(fields.iter());
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
pub(super) fn cycle_error(config: &Config, loaded: &[Loaded], cycle: &[usize]) -> Diagnostic {
    let Loaded {
        node: first,
        prompt,
        ..
    } = &loaded[cycle[0]];
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
        let names: Vec<&str> = cycle
            .iter()
            .map(|i| loaded[*i].node.name.as_str())
            .collect();
        let mut path = names.join(" -> ");
        path.push_str(&format!(" -> {}", names[0]));
        format!(
            "the nodes {} form a cycle: {path} (each uses the next)",
            crate::diag::backticked(&names)
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
pub(super) fn check_offline(
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
    // The offline model's phrase bank has five languages; a task that writes in the ticket's
    // language cannot serve a ticket in another one.
    let foreign: Vec<&str> = config
        .languages
        .iter()
        .filter(|(language, _)| !language.is_built_in())
        .map(|(language, _)| language.code())
        .collect();
    if spec.required.contains(&"language") && !foreign.is_empty() {
        return Err(at_node(format!(
            "the offline model writes DE, EN, FR, ES and PT tickets, so it cannot write `{}` for {} tickets; set a real model for this node with `model = \"...\"` and a [models.NAME] table, or leave those languages out",
            node.name,
            foreign.join(", ")
        )));
    }
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
pub(super) fn topological_order(nodes: &[Loaded]) -> Result<Vec<usize>, Vec<usize>> {
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, loaded)| (loaded.node.name.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|loaded| {
            loaded
                .variables
                .iter()
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
