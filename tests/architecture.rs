//! The shape of the source tree, checked: imports point one way, files and functions stay short.
//!
//! Every file under `src/` is parsed (syn) and every path it names through `crate::`, `super::` or
//! `self::` is resolved to the module it points into. Two modules that are siblings (children of
//! the same parent, top-level modules being the crate's children) have an edge when code in one,
//! or in anything below it, names the other. Those edges must form no cycle at any level: a
//! module never imports a module that imports it back, directly or around a loop. A child using
//! its parent (or the parent its child) is not an edge: they are one unit. Test code (`#[cfg(test)]`)
//! is left out, as tests may reach anywhere.
//!
//! Also checked: no file under `src/` is over 700 lines (data tables and test-only files aside),
//! and no function anywhere under `src/` or `tests/` is over 120 lines.
//!
//! Run alone with `cargo test --test integration architecture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const MAX_FILE_LINES: usize = 700;
const MAX_FUNCTION_LINES: usize = 120;

/// A module path below the crate root: `["engine", "ticket"]`.
type ModulePath = Vec<String>;

struct SourceFile {
    path: PathBuf,
    module: ModulePath,
    syntax: syn::File,
    lines: usize,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/engine/ticket.rs` -> `engine::ticket`; `src/engine/mod.rs` -> `engine`; lib.rs and main.rs
/// are the root.
fn module_of(src: &Path, file: &Path) -> ModulePath {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

fn parse(path: &Path) -> (syn::File, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let syntax = syn::parse_file(&text)
        .unwrap_or_else(|e| panic!("{}: does not parse: {e}", path.display()));
    (syntax, text.lines().count())
}

fn source_files() -> Vec<SourceFile> {
    let src = root().join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths
        .into_iter()
        .map(|path| {
            let (syntax, lines) = parse(&path);
            SourceFile {
                module: module_of(&src, &path),
                path,
                syntax,
                lines,
            }
        })
        .collect()
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Collects the paths a file names, as written, leaving test code out; and the modules it
/// declares only for tests (`#[cfg(test)] mod tests;`).
#[derive(Default)]
struct PathCollector {
    /// Each path as segments, with the module it was written in (inline modules included).
    paths: Vec<(ModulePath, Vec<String>)>,
    test_modules: Vec<ModulePath>,
    module: ModulePath,
}

impl PathCollector {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut path = prefix.clone();
                path.push(n.ident.to_string());
                self.paths.push((self.module.clone(), path));
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix.clone();
                path.push(r.ident.to_string());
                self.paths.push((self.module.clone(), path));
            }
            syn::UseTree::Glob(_) => self.paths.push((self.module.clone(), prefix.clone())),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if is_cfg_test(item_attrs(item)) {
            if let syn::Item::Mod(m) = item {
                let mut module = self.module.clone();
                module.push(m.ident.to_string());
                self.test_modules.push(module);
            }
            return;
        }
        match item {
            syn::Item::Use(u) => self.use_tree(&mut Vec::new(), &u.tree),
            syn::Item::Mod(m) if m.content.is_some() => {
                self.module.push(m.ident.to_string());
                syn::visit::visit_item(self, item);
                self.module.pop();
            }
            _ => syn::visit::visit_item(self, item),
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Fn(f) => &f.attrs,
            syn::ImplItem::Const(c) => &c.attrs,
            syn::ImplItem::Type(t) => &t.attrs,
            _ => return syn::visit::visit_impl_item(self, item),
        };
        if !is_cfg_test(attrs) {
            syn::visit::visit_impl_item(self, item);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.paths.push((self.module.clone(), segments));
        syn::visit::visit_path(self, path);
    }
}

/// The module a path written in `from` points into, if it names one through `crate`, `super` or
/// `self` (other paths name external crates, locals or items in scope).
fn resolve(
    modules: &BTreeSet<ModulePath>,
    from: &ModulePath,
    path: &[String],
) -> Option<ModulePath> {
    let mut base: ModulePath;
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base = Vec::new();
            rest = &rest[1..];
        }
        Some("super") => {
            base = from.clone();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some("self") => {
            base = from.clone();
            rest = &rest[1..];
        }
        _ => return None,
    }
    // The longest prefix that is a module.
    for segment in rest {
        let mut next = base.clone();
        next.push(segment.clone());
        if !modules.contains(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

/// The edge between siblings that a reference from `from` to `to` makes, if any: the children of
/// their deepest common ancestor that lead to each.
fn sibling_edge(from: &ModulePath, to: &ModulePath) -> Option<(ModulePath, ModulePath)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None; // one contains the other
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

fn name(module: &ModulePath) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// The cycles in `edges`, each as the modules around it (Tarjan's strongly connected components).
fn cycles(edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<Vec<ModulePath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        index: BTreeMap<&'a ModulePath, usize>,
        low: BTreeMap<&'a ModulePath, usize>,
        stack: Vec<&'a ModulePath>,
        on_stack: BTreeSet<&'a ModulePath>,
        found: Vec<Vec<ModulePath>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModulePath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let files = source_files();
    let mut modules: BTreeSet<ModulePath> = files.iter().map(|f| f.module.clone()).collect();
    let mut references = Vec::new();
    let mut test_modules = BTreeSet::new();
    for file in &files {
        let mut collector = PathCollector {
            module: file.module.clone(),
            ..PathCollector::default()
        };
        collector.visit_file(&file.syntax);
        for item in &file.syntax.items {
            if let syn::Item::Mod(m) = item {
                if m.content.is_some() {
                    let mut inline = file.module.clone();
                    inline.push(m.ident.to_string());
                    modules.insert(inline);
                }
            }
        }
        references.extend(collector.paths);
        test_modules.extend(collector.test_modules);
    }
    let mut edges: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (from, path) in &references {
        if test_modules.iter().any(|t| from.starts_with(t)) {
            continue;
        }
        let Some(to) = resolve(&modules, from, path) else {
            continue;
        };
        if let Some((a, b)) = sibling_edge(from, &to) {
            edges.entry(a).or_default().insert(b);
        }
    }
    let found = cycles(&edges);
    let described: Vec<String> = found
        .iter()
        .map(|cycle| {
            let members: Vec<String> = cycle.iter().map(name).collect();
            let inner: Vec<String> = cycle
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| cycle.contains(b))
                        .map(move |b| format!("{} -> {}", name(a), name(b)))
                })
                .collect();
            format!("{} ({})", members.join(", "), inner.join("; "))
        })
        .collect();
    assert!(
        described.is_empty(),
        "modules in import cycles:\n  {}",
        described.join("\n  ")
    );
}

/// Files that are only tests: `#[cfg(test)] mod tests;` in their parent.
fn is_test_only(file: &SourceFile, files: &[SourceFile]) -> bool {
    let Some((last, parent)) = file.module.split_last() else {
        return false;
    };
    files.iter().filter(|f| f.module == parent).any(|f| {
        f.syntax.items.iter().any(|item| {
            matches!(item, syn::Item::Mod(m) if m.ident == last && m.content.is_none() && is_cfg_test(&m.attrs))
        })
    })
}

#[test]
fn no_source_file_is_over_700_lines() {
    let files = source_files();
    let long: Vec<String> = files
        .iter()
        .filter(|f| f.lines > MAX_FILE_LINES && !is_test_only(f, &files))
        .map(|f| format!("{}: {} lines", f.path.display(), f.lines))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines (split them by concept):\n  {}",
        long.join("\n  ")
    );
}

/// Every function and method with its first and last line.
#[derive(Default)]
struct FunctionSpans {
    found: Vec<(String, usize, usize)>,
}

impl FunctionSpans {
    fn add(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        self.found
            .push((name.to_string(), span.start().line, span.end().line));
    }
}

impl<'ast> Visit<'ast> for FunctionSpans {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        use syn::spanned::Spanned;
        self.add(&f.sig.ident, f.span());
        syn::visit::visit_item_fn(self, f);
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        use syn::spanned::Spanned;
        self.add(&f.sig.ident, f.span());
        syn::visit::visit_impl_item_fn(self, f);
    }
    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        use syn::spanned::Spanned;
        self.add(&f.sig.ident, f.span());
        syn::visit::visit_trait_item_fn(self, f);
    }
}

#[test]
fn no_function_is_over_120_lines() {
    let mut paths = Vec::new();
    rust_files(&root().join("src"), &mut paths);
    rust_files(&root().join("tests"), &mut paths);
    let mut long = Vec::new();
    for path in paths {
        let (syntax, _) = parse(&path);
        let mut spans = FunctionSpans::default();
        spans.visit_file(&syntax);
        for (name, first, last) in spans.found {
            let lines = last - first + 1;
            if lines > MAX_FUNCTION_LINES {
                long.push(format!(
                    "{}:{first}: `{name}`, {lines} lines",
                    path.display()
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines (give their parts names):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_checker_sees_a_cycle_and_resolves_paths() {
    let modules: BTreeSet<ModulePath> = [vec!["a"], vec!["a", "b"], vec!["c"]]
        .into_iter()
        .map(|m| m.into_iter().map(String::from).collect())
        .collect();
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    assert_eq!(
        resolve(&modules, &s(&["a", "b"]), &s(&["super", "super", "c", "X"])),
        Some(s(&["c"]))
    );
    assert_eq!(
        resolve(&modules, &s(&["c"]), &s(&["crate", "a", "b", "f"])),
        Some(s(&["a", "b"]))
    );
    assert_eq!(sibling_edge(&s(&["a", "b"]), &s(&["a"])), None);
    assert_eq!(
        sibling_edge(&s(&["a", "b"]), &s(&["c"])),
        Some((s(&["a"]), s(&["c"])))
    );
    let mut edges = BTreeMap::new();
    edges.insert(s(&["a"]), BTreeSet::from([s(&["c"])]));
    edges.insert(s(&["c"]), BTreeSet::from([s(&["a"])]));
    assert_eq!(cycles(&edges), vec![vec![s(&["a"]), s(&["c"])]]);
}
