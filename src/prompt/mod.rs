//! Prompt files: one minijinja template per node, with a system part and a user part.
//!
//! This module owns the prompt file format and its checks: reading the file (size, UTF-8, inside the
//! project), splitting it at the `--- system` / `--- user` marker lines, and locating a variable or a
//! template error at its line in the file. Compiling and rendering the templates, and deciding which
//! variables exist, is `graph`'s job. The invariant: every line number reported for a prompt is the
//! line in the file the user edits, not in the part after splitting.
//!
//! The format:
//!
//! ```text
//! {# optional comments before the first marker #}
//! --- system
//! You are a customer writing to a support desk.
//! --- user
//! Write a subject line about {{ topic }}.
//! ```
//!
//! A file without marker lines is all user message. Each part is trimmed of surrounding blank lines.

use std::ops::Range;
use std::path::{Path, PathBuf};

mod scan;

use crate::config::io_reason;
use crate::diag::{Diagnostic, Diagnostics};

pub(crate) use scan::{Token, tags, tokens, unclosed_block};
use scan::{find_identifier, strip_comments};

/// Prompt files larger than this are refused: a prompt that size is a mistake, and reading it for
/// every ticket would be slow.
pub(crate) const MAX_PROMPT_BYTES: u64 = 1024 * 1024;

const SYSTEM_MARKER: &str = "--- system";
const USER_MARKER: &str = "--- user";

/// A parsed prompt file.
#[derive(Debug, Clone)]
pub struct PromptFile {
    /// The path as shown to the user (relative to where the config lives).
    pub(crate) display: PathBuf,
    pub(crate) source: String,
    pub(crate) system: Option<Part>,
    pub user: Part,
}

/// One part of a prompt file.
#[derive(Debug, Clone)]
pub struct Part {
    pub text: String,
    /// The 1-based line in the file where `text` begins.
    pub first_line: usize,
    /// The byte offset in the file where `text` begins, so that a position in `text` maps back to
    /// the file exactly (columns included).
    pub offset: usize,
}

/// Why a prompt file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PromptError {
    /// The path is the problem (missing, a folder, outside the project): the message is about the
    /// path as written in the config, and belongs at its `prompt = ...` line.
    #[error("{0}")]
    Path(String),
    /// The file's content is the problem: located in the prompt file.
    #[error("{0}")]
    Content(Diagnostics),
}

impl From<Diagnostics> for PromptError {
    fn from(problems: Diagnostics) -> PromptError {
        PromptError::Content(problems)
    }
}

impl PromptFile {
    /// Reads and splits `path`, which must lie inside `project_root`. `written` is the path as the
    /// config names it, for messages about the path itself.
    pub(crate) fn load(
        display: &Path,
        written: &Path,
        path: &Path,
        project_root: &Path,
    ) -> Result<PromptFile, PromptError> {
        let shown = written.display();
        let unreadable = |e: std::io::Error| {
            PromptError::Path(format!(
                "cannot read the prompt file `{shown}`: {}",
                io_reason(&e)
            ))
        };
        let metadata = std::fs::metadata(path).map_err(unreadable)?;
        if metadata.is_dir() {
            return Err(PromptError::Path(format!(
                "`{shown}` is a folder, not a prompt file"
            )));
        }
        if !metadata.is_file() {
            return Err(PromptError::Path(format!(
                "`{shown}` is not a regular file"
            )));
        }
        let root = if project_root.as_os_str().is_empty() {
            Path::new(".")
        } else {
            project_root
        };
        let root = root.canonicalize().map_err(|e| {
            PromptError::Path(format!(
                "cannot resolve the project folder: {}",
                io_reason(&e)
            ))
        })?;
        let real = path.canonicalize().map_err(unreadable)?;
        if !real.starts_with(&root) {
            return Err(PromptError::Path(format!(
                "`{shown}` lies outside the project folder; keep prompts inside the project so the dataset is reproducible from it"
            )));
        }
        if metadata.len() > MAX_PROMPT_BYTES {
            return Err(Diagnostics::from(Diagnostic::file(
                display,
                format!(
                    "is {} bytes; prompt files are limited to {} bytes",
                    metadata.len(),
                    MAX_PROMPT_BYTES
                ),
            ))
            .into());
        }
        let bytes = std::fs::read(path).map_err(unreadable)?;
        let source = String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            Diagnostics::from(Diagnostic::invalid_utf8(display, e.as_bytes(), valid))
        })?;
        Ok(PromptFile::parse(display, source)?)
    }

    /// Splits `source` into its parts.
    pub fn parse(display: &Path, source: String) -> Result<PromptFile, Diagnostics> {
        let mut system: Option<(usize, usize)> = None; // (marker line index, start byte)
        let mut user: Option<(usize, usize)> = None;
        let mut problems = Diagnostics::default();
        let mut offset = 0;
        let mut first_marker_offset = None;
        for (index, line) in source.split_inclusive('\n').enumerate() {
            let trimmed = line.trim_end();
            let next = offset + line.len();
            let marker = if trimmed == SYSTEM_MARKER {
                Some(&mut system)
            } else if trimmed == USER_MARKER {
                Some(&mut user)
            } else {
                None
            };
            if let Some(slot) = marker {
                first_marker_offset.get_or_insert(offset);
                if slot.is_some() {
                    problems.push(Diagnostic::at_line(
                        display,
                        &source,
                        index + 1,
                        Some(1),
                        format!("`{trimmed}` appears twice"),
                    ));
                }
                *slot = Some((index, next));
            }
            offset = next;
        }
        if let (Some((s, _)), Some((u, _))) = (system, user) {
            if s > u {
                problems.push(Diagnostic::at_line(
                    display,
                    &source,
                    s + 1,
                    Some(1),
                    "`--- system` must come before `--- user`",
                ));
            }
        }
        if system.is_some() && user.is_none() {
            problems.push(Diagnostic::file(
                display,
                "has a `--- system` part but no `--- user` part",
            ));
        }
        if let Some(first) = first_marker_offset {
            let preamble = strip_comments(&source[..first]);
            if !preamble.trim().is_empty() {
                problems.push(Diagnostic::at_line(
                    display,
                    &source,
                    1,
                    Some(1),
                    "text before the first `--- system` / `--- user` line; move it into a part or make it a `{# comment #}`",
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let part = |start: usize, end: usize| -> Part {
            let raw = &source[start..end];
            let leading = raw.len() - raw.trim_start().len();
            let first_line = source[..start + leading].matches('\n').count() + 1;
            Part {
                text: raw.trim().to_string(),
                first_line,
                offset: start + leading,
            }
        };
        let user_part;
        let mut system_part = None;
        match (system, user) {
            (None, None) => user_part = part(0, source.len()),
            (Some((_, s_start)), Some((u_line, u_start))) => {
                let s_end = line_offset(&source, u_line);
                system_part = Some(part(s_start, s_end));
                user_part = part(u_start, source.len());
            }
            (None, Some((_, u_start))) => user_part = part(u_start, source.len()),
            (Some(_), None) => unreachable!("reported above"),
        }
        if user_part.text.is_empty() {
            let message =
                "the user part of this prompt is empty; write the instruction for the model";
            // Point at the `--- user` line when there is one; a file without markers is all user
            // part, and empty as a whole.
            let diagnostic = match user {
                Some((line, _)) => {
                    Diagnostic::at_line(display, &source, line + 1, Some(1), message)
                }
                None => Diagnostic::file(display, message),
            };
            return Err(diagnostic.into());
        }
        Ok(PromptFile {
            display: display.to_path_buf(),
            source,
            system: system_part.filter(|p| !p.text.is_empty()),
            user: user_part,
        })
    }

    /// The parts with their names, system first.
    pub fn parts(&self) -> impl Iterator<Item = (&'static str, &Part)> {
        self.system
            .iter()
            .map(|p| ("system", p))
            .chain(std::iter::once(("user", &self.user)))
    }

    /// A diagnostic at `line` (1-based, within `part`) of this file.
    pub(crate) fn error_at(
        &self,
        part: &Part,
        line: Option<usize>,
        column: Option<usize>,
        message: impl Into<String>,
    ) -> Diagnostic {
        match line {
            Some(line) => Diagnostic::at_line(
                &self.display,
                &self.source,
                part.first_line + line - 1,
                column,
                message,
            ),
            None => Diagnostic::file(&self.display, message),
        }
    }

    /// A diagnostic at `span`, a byte range of `part.text`, underlined in the file.
    pub(crate) fn error_at_span(
        &self,
        part: &Part,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::at(
            &self.display,
            &self.source,
            part.offset + span.start..part.offset + span.end,
            message,
        )
    }

    /// The 1-based (line, column) in the file of byte `offset` of `part.text`.
    pub(crate) fn position(&self, part: &Part, offset: usize) -> (usize, usize) {
        let at = (part.offset + offset).min(self.source.len());
        let before = &self.source[..floor_boundary(&self.source, at)];
        let line = before.matches('\n').count() + 1;
        let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
            .chars()
            .count()
            + 1;
        (line, column)
    }

    /// Where `variable` is first used as a variable inside a `{{ }}` or `{% %}` tag of `part`:
    /// (1-based line within the part, 1-based column).
    pub fn locate_variable(part: &Part, variable: &str) -> Option<(usize, usize)> {
        let text = &part.text;
        let at = find_variable(text, variable)?;
        let line = text[..at].matches('\n').count() + 1;
        let column = text[text[..at].rfind('\n').map_or(0, |i| i + 1)..at]
            .chars()
            .count()
            + 1;
        Some((line, column))
    }
}

/// Byte offset in `text` (a template) of the first use of `variable` inside a tag.
pub(crate) fn find_variable(text: &str, variable: &str) -> Option<usize> {
    tags(text).iter().find_map(|tag| {
        find_identifier(&text[tag.body.clone()], variable).map(|at| tag.body.start + at)
    })
}

fn floor_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn line_offset(source: &str, line_index: usize) -> usize {
    source
        .split_inclusive('\n')
        .take(line_index)
        .map(str::len)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> Result<PromptFile, Diagnostics> {
        PromptFile::parse(Path::new("prompts/x.jinja"), source.to_string())
    }

    #[test]
    fn splits_system_and_user_with_file_line_numbers() {
        let file = parse("{# header #}\n--- system\nYou are {{ role }}.\n\n--- user\n\nWrite about {{ topic }}.\n").unwrap();
        let system = file.system.as_ref().unwrap();
        assert_eq!(system.text, "You are {{ role }}.");
        assert_eq!(system.first_line, 3);
        assert_eq!(file.user.text, "Write about {{ topic }}.");
        assert_eq!(file.user.first_line, 7);
        assert_eq!(
            PromptFile::locate_variable(&file.user, "topic"),
            Some((1, 16))
        );
    }

    #[test]
    fn a_file_without_markers_is_all_user() {
        let file = parse("Hello {{ name }}").unwrap();
        assert!(file.system.is_none());
        assert_eq!(file.user.first_line, 1);
    }

    #[test]
    fn empty_user_part_is_an_error() {
        let err = parse("--- system\nx\n--- user\n\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("user part of this prompt is empty"),
            "{err}"
        );
        assert!(parse("   \n").is_err());
    }

    #[test]
    fn stray_text_before_markers_is_an_error() {
        let err = parse("oops\n--- user\nx").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("prompts/x.jinja:1:1: text before"),
            "{err}"
        );
    }

    #[test]
    fn variables_are_found_outside_strings_and_attributes() {
        let part = Part {
            text: "a {{ x.topic }} {{ 'topic' }}\n{% if topic %}".to_string(),
            first_line: 1,
            offset: 0,
        };
        assert_eq!(PromptFile::locate_variable(&part, "topic"), Some((2, 7)));
    }
}
