//! `ticketbuild report`: the dataset report, computed from the written files, as HTML or JSON.

use std::path::Path;

use super::args::ReportArgs;
use super::{CliError, Outcome, load, runtime_error, say};
use crate::report::{self, Sources};

pub(super) fn run(args: ReportArgs) -> Result<Outcome, CliError> {
    let (config, graph) = load(&args.project)?;
    let build = crate::build::last_report(&config);
    // The cache only names the artifacts of the examples: a cache that cannot be opened (a
    // running `watch` holds it) leaves them unnamed rather than failing the report.
    let cache = crate::cache::open(&config.cache_dir).ok();
    let keys = cache.as_deref().and_then(report::keys_manifest);
    let dataset = report::compute(&Sources {
        config: &config,
        graph: &graph,
        build: build.as_ref(),
        cache: cache.as_deref().zip(keys),
    })
    .map_err(runtime_error)?;
    if args.json {
        let json = serde_json::to_string_pretty(&dataset).map_err(runtime_error)?;
        match &args.file {
            Some(path) => write(path, &json)?,
            None => {
                say!("{json}");
            }
        }
        return Ok(Outcome::Success);
    }
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| report::html_path(&config));
    write(&path, &report::render_html(&dataset))?;
    let o = &dataset.overview;
    say!(
        "wrote {}: {} rows of {} from `{}`",
        path.display(),
        o.rows,
        config.name,
        dataset.file
    );
    if o.missing > 0 {
        say!(
            "{} of the {} tickets asked for are missing ({} failed in the last build); the report describes the rows written",
            o.missing,
            o.expected_rows,
            o.failed
        );
    }
    if args.open {
        open(&path);
    }
    Ok(Outcome::Success)
}

fn write(path: &Path, text: &str) -> Result<(), CliError> {
    report::write_atomically(path, text).map_err(runtime_error)
}

/// Opens `path` in the desktop's browser; says so when it cannot (a server has none).
fn open(path: &Path) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    if let Err(error) = std::process::Command::new(opener)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        eprintln!(
            "ticketbuild: note: cannot open the report with `{opener}` ({error}); open {} in a browser",
            path.display()
        );
    }
}
