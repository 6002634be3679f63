//! The output files load in pandas, polars and DuckDB without hints, and all agree.
//!
//! Needs python3 with duckdb, polars, pandas and pyarrow; `.ci/run` installs them. The test fails
//! (it does not skip) when they are missing, so CI cannot pass without running it.

use std::process::Command;

use crate::support::{Project, repo_root};

#[test]
fn issue_2_outputs_load_in_pandas_polars_and_duckdb() {
    let project = Project::example();
    project.edit("dataset.toml", "rows = 200", "rows = 60");
    project.build_json(&[]);
    let script = repo_root().join("tests/interop/read_all.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(project.file("out"))
        .arg("tickets")
        .arg("60")
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "reading the dataset failed (is `pip install duckdb polars pandas pyarrow` done?):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
