//! The output files load in pandas, polars and DuckDB without hints, and all agree.
//!
//! Needs python3 and a way to reach PyPI; nothing installed by hand: the readers are provisioned
//! on first use (`support::python`). The test fails (it does not skip) when they cannot be.

use crate::support::python::readers;
use crate::support::{Project, repo_root};

#[test]
fn issue_2_outputs_load_in_pandas_polars_and_duckdb() {
    let project = Project::example();
    project.edit("dataset.toml", "rows = 200", "rows = 60");
    project.build_json(&[]);
    let script = repo_root().join("tests/interop/read_all.py");
    let output = readers()
        .python()
        .arg(&script)
        .arg(project.file("out"))
        .arg("tickets")
        .arg("60")
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "reading the dataset failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
