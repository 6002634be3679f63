//! The files `watch` watches, and whether their content changed.
//!
//! This module owns which files are watched (the config file, every node's prompt and the `.env`
//! next to the config), arming the file watcher on their folders, coalescing a burst of events
//! into one [`Change`], and deciding from the files' contents whether anything changed. The watch
//! session (builds, what it prints) is `cli::watch`'s.
//!
//! The watcher is armed on the folders that hold the watched files, not recursively, and events are
//! filtered by path: an editor's atomic save (temporary file renamed over the original) replaces
//! the file's inode, and a folder watch survives that where a file watch would not. Event kinds are
//! not trusted: after each batch the watched files are read and hashed (BLAKE3 of their bytes) and
//! compared with the hashes last acted on. The invariant: [`WatchedFiles::changed`] names a file
//! only when its content differs from the content last acted on, so a save that changes nothing,
//! and writes to the output folder or the cache (which hold no watched file), never count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::Config;

/// The content of each watched file: `None` when it is missing or unreadable.
type Hashes = BTreeMap<PathBuf, Option<blake3::Hash>>;

/// Paths that may have changed, from one debounced batch of file events.
#[derive(Debug, Default)]
pub(crate) struct Change {
    pub(crate) paths: Vec<PathBuf>,
    /// The watcher lost events (or reported an error): look at every watched file.
    pub(crate) rescan: bool,
    /// What the watcher reported, for the user.
    pub(crate) errors: Vec<String>,
}

impl Change {
    pub(crate) fn merge(&mut self, other: Change) {
        self.paths.extend(other.paths);
        self.rescan |= other.rescan;
        self.errors.extend(other.errors);
    }
}

/// The file watcher of a watch session.
pub(crate) type Watcher = Debouncer<RecommendedWatcher, RecommendedCache>;

/// A debounced watcher that sends the paths of content events (not reads) to `events`. Each path
/// settles for `timeout`; the debouncer looks every `tick`.
pub(crate) fn file_watcher(
    timeout: Duration,
    tick: Duration,
    events: UnboundedSender<Change>,
) -> Result<Watcher, notify::Error> {
    let handler = move |result: DebounceEventResult| {
        let mut change = Change::default();
        match result {
            Ok(batch) => {
                for event in batch {
                    if event.need_rescan() {
                        change.rescan = true;
                    } else if may_change_content(&event.kind) {
                        change.paths.extend(event.paths.iter().cloned());
                    }
                }
            }
            Err(errors) => {
                change.errors = errors.iter().map(ToString::to_string).collect();
                change.rescan = true;
            }
        }
        if change.rescan || !change.paths.is_empty() {
            // The receiver is gone only when the session is ending.
            let _ = events.send(change);
        }
    };
    notify_debouncer_full::new_debouncer(timeout, Some(tick.max(Duration::from_millis(1))), handler)
}

/// Whether an event can mean new content. Opening and reading a file (which the watch itself does
/// to hash it, as does the build) cannot; counting those would make every check trigger the next.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The watched files, the folders the watcher is armed on, and the content last acted on.
pub(crate) struct WatchedFiles {
    watcher: Watcher,
    /// The folder of the config file, absolute; changed files are named relative to it.
    root: PathBuf,
    /// The config file, absolute.
    config_path: PathBuf,
    /// Every watched file, absolute: the config, `.env` beside it, the prompts it names.
    files: BTreeSet<PathBuf>,
    /// The folders the watcher is armed on.
    armed: BTreeSet<PathBuf>,
    /// The content of each watched file when it was last acted on.
    seen: Hashes,
    /// Problems arming the watcher, not yet shown.
    warnings: Vec<String>,
}

impl WatchedFiles {
    /// Watches the config file at `config_path` (absolute), the `.env` beside it, and the prompts
    /// `config` names (when it loaded), taking their content now as the content acted on.
    pub(crate) fn new(
        watcher: Watcher,
        config_path: PathBuf,
        config: Option<&Config>,
    ) -> WatchedFiles {
        let root = config_path
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let mut files = BTreeSet::from([config_path.clone(), root.join(".env")]);
        files.extend(config.map(prompt_files).unwrap_or_default());
        let mut watched = WatchedFiles {
            watcher,
            files,
            root,
            config_path,
            armed: BTreeSet::new(),
            seen: Hashes::new(),
            warnings: Vec::new(),
        };
        watched.arm(&[], false);
        watched.seen = watched.hash_files();
        watched
    }

    /// How many watched files exist now.
    pub(crate) fn existing(&self) -> usize {
        self.seen.values().filter(|h| h.is_some()).count()
    }

    /// Problems met arming the watcher since the last call.
    pub(crate) fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Makes the watched set the config, `.env` and `config`'s prompts; newly watched files are
    /// hashed now, files no longer named are forgotten.
    pub(crate) fn track(&mut self, config: &Config) {
        let mut files = BTreeSet::from([self.config_path.clone(), self.root.join(".env")]);
        files.extend(prompt_files(config));
        if files == self.files {
            return;
        }
        self.files = files;
        self.arm(&[], false);
        self.seen.retain(|path, _| self.files.contains(path));
        for path in &self.files {
            if !self.seen.contains_key(path) {
                self.seen.insert(path.clone(), hash_file(path));
            }
        }
    }

    /// The watched files whose content differs from the content last acted on, after `change`;
    /// they become the content acted on. Empty when `change` concerns no watched file or changed
    /// nothing.
    pub(crate) fn changed(&mut self, change: Change) -> Vec<PathBuf> {
        let touched: Vec<PathBuf> = change
            .paths
            .into_iter()
            .filter(|path| self.concerns(path))
            .collect();
        if touched.is_empty() && !change.rescan {
            return Vec::new();
        }
        // Re-arm before hashing: a change made in between is then either hashed or reported.
        self.arm(&touched, change.rescan);
        let now = self.hash_files();
        let changed: Vec<PathBuf> = now
            .iter()
            .filter(|(path, hash)| self.seen.get(*path) != Some(*hash))
            .map(|(path, _)| path.clone())
            .collect();
        if !changed.is_empty() {
            self.seen = now;
        }
        changed
    }

    /// `a.jinja, b.jinja` as the user would name them.
    pub(crate) fn describe(&self, paths: &[PathBuf]) -> String {
        let mut names: Vec<String> = paths
            .iter()
            .map(|p| {
                p.strip_prefix(&self.root)
                    .unwrap_or(p)
                    .display()
                    .to_string()
            })
            .collect();
        if names.len() > 4 {
            let more = names.len() - 3;
            names.truncate(3);
            names.push(format!("{more} more files"));
        }
        names.join(", ")
    }

    /// Arms the watcher on the folders of the watched files (the nearest existing ancestor when a
    /// folder is missing) and disarms the others. A folder that `touched` names (or one of its
    /// ancestors) may have been replaced, so it is re-armed; `rescan` re-arms every folder.
    fn arm(&mut self, touched: &[PathBuf], rescan: bool) {
        let wanted: BTreeSet<PathBuf> = self
            .files
            .iter()
            .filter_map(|file| file.parent())
            .map(existing_ancestor)
            .collect();
        let stale: Vec<PathBuf> = self.armed.difference(&wanted).cloned().collect();
        for dir in stale {
            // A folder that is gone has lost its watch already.
            let _ = self.watcher.unwatch(&dir);
            self.armed.remove(&dir);
        }
        for dir in wanted {
            let replaced = rescan || touched.iter().any(|path| dir.starts_with(path));
            if self.armed.contains(&dir) && !replaced {
                continue;
            }
            if self.armed.remove(&dir) {
                let _ = self.watcher.unwatch(&dir);
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.armed.insert(dir);
                }
                Err(e) => self
                    .warnings
                    .push(format!("cannot watch {}: {e}", dir.display())),
            }
        }
    }

    /// Whether an event on `path` can concern a watched file: the file itself, or a folder on the
    /// way to one (created, removed or renamed).
    fn concerns(&self, path: &Path) -> bool {
        self.files.contains(path)
            || self
                .files
                .iter()
                .any(|file| file.parent().is_some_and(|dir| dir.starts_with(path)))
    }

    fn hash_files(&self) -> Hashes {
        self.files
            .iter()
            .map(|path| (path.clone(), hash_file(path)))
            .collect()
    }
}

/// The prompt files `config` names, absolute.
fn prompt_files(config: &Config) -> Vec<PathBuf> {
    config
        .nodes
        .iter()
        .map(|node| config.resolve(&node.prompt))
        .map(|path| std::path::absolute(&path).unwrap_or(path))
        .collect()
}

fn hash_file(path: &Path) -> Option<blake3::Hash> {
    std::fs::read(path).ok().map(|bytes| blake3::hash(&bytes))
}

/// `dir` when it exists, else its nearest existing ancestor.
fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(dir)
        .to_path_buf()
}
