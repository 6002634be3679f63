//! A Python with the readers the tests compare against: pandas, polars, DuckDB, pyarrow, and
//! Hugging Face's `datasets` and `huggingface_hub` (for the dataset card).
//!
//! Needs python3 and a way to reach PyPI; nothing installed by hand. On first use it builds a
//! virtual environment at `target/tmp/interop-venv` (`python3 -m venv`, then `pip install` the
//! [`PACKAGES`] into it). Where `python3 -m venv` is unavailable (Debian's python3 without
//! `python3-venv`), the packages go to a folder of that environment with `python3 -m pip install
//! --target` and reach scripts through PYTHONPATH. The environment is built in a temporary folder
//! beside it and renamed into place once pip has succeeded, so test processes that race never see
//! a half-built one; later runs reuse it while the base python and the package list are the same.
//! A test that needs it fails (it does not skip) when it cannot be provisioned, so CI cannot pass
//! without running it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// What the scripts under tests/interop import.
const PACKAGES: &[&str] = &[
    "duckdb",
    "polars",
    "pandas",
    "pyarrow",
    "datasets",
    "huggingface_hub",
];

/// Written last into a finished environment: the base python's version and the package list.
const SENTINEL: &str = "interop-readers-complete";

/// Where `pip install --target` puts the packages when there is no venv.
const TARGET_SITE: &str = "site-packages";

/// A python that can import [`PACKAGES`].
pub enum Readers {
    /// A virtual environment; its `bin/python`.
    Venv(PathBuf),
    /// The base python3 with this folder on PYTHONPATH.
    Target(PathBuf),
}

impl Readers {
    pub fn python(&self) -> Command {
        match self {
            Readers::Venv(python) => Command::new(python),
            Readers::Target(site) => {
                let mut command = Command::new("python3");
                command.env("PYTHONPATH", site);
                command
            }
        }
    }

    /// The readers in a finished environment at `dir`.
    fn in_dir(dir: &Path) -> Readers {
        let python = dir.join("bin/python");
        if python.exists() {
            Readers::Venv(python)
        } else {
            Readers::Target(dir.join(TARGET_SITE))
        }
    }
}

/// The readers, installed on first use under the cargo target directory; panics with what to
/// install when they cannot be.
pub fn readers() -> Readers {
    environment("interop-venv", PACKAGES)
}

/// A python with moto's S3 server (`python -m moto.server`), the real S3 API the remote cache
/// tests run against; installed on first use like the readers.
pub fn moto() -> Readers {
    environment("moto-venv", &["moto[server]"])
}

/// A python that can import `packages`, in `target/tmp/NAME`.
fn environment(name: &str, packages: &[&str]) -> Readers {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let expected = sentinel_text(packages);
    if std::fs::read_to_string(dir.join(SENTINEL)).ok().as_deref() == Some(expected.as_str()) {
        return Readers::in_dir(&dir);
    }
    eprintln!(
        "interop: installing {} into {} (once; later runs reuse it)",
        packages.join(" "),
        dir.display()
    );
    let building = temporary_sibling(&dir, "building");
    let built = build_venv(&building, packages).or_else(|venv_error| {
        remove_if_present(&building);
        build_target(&building, packages).map_err(|target_error| {
            format!(
                "`python3 -m venv` failed:\n{venv_error}\n\
                 and `python3 -m pip install --target` failed:\n{target_error}"
            )
        })
    });
    if let Err(error) = built {
        remove_if_present(&building);
        panic!(
            "cannot provision the Python packages of the tests ({}). Install the venv module \
             (Debian/Ubuntu: `apt install python3-venv`) or pip for python3, and make sure PyPI can \
             be reached.\n{error}",
            packages.join(", ")
        );
    }
    std::fs::write(building.join(SENTINEL), &expected).expect("write the sentinel");
    move_into_place(&building, &dir, &expected);
    Readers::in_dir(&dir)
}

/// The sentinel's contents: a change of the base python or of the packages builds a new
/// environment.
fn sentinel_text(packages: &[&str]) -> String {
    let version = run(Command::new("python3").args(["-c", "import sys; print(sys.version)"]))
        .unwrap_or_else(|error| panic!("python3 is needed by the interop test: {error}"));
    format!(
        "{}\n{}\n",
        String::from_utf8_lossy(&version.stdout).trim(),
        packages.join(" ")
    )
}

/// A virtual environment at `dir` with the packages.
fn build_venv(dir: &Path, packages: &[&str]) -> Result<(), String> {
    run(Command::new("python3").args(["-m", "venv"]).arg(dir))?;
    run(Command::new(dir.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages))?;
    Ok(())
}

/// The packages in `dir/site-packages`, for the base python3 (no venv module).
fn build_target(dir: &Path, packages: &[&str]) -> Result<(), String> {
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(dir.join(TARGET_SITE))
        .args(packages))?;
    Ok(())
}

/// Renames the finished `building` to `dir`. When another test process got there first with the
/// same sentinel, its environment is kept and ours removed; an outdated one is moved aside first.
fn move_into_place(building: &Path, dir: &Path, expected: &str) {
    for _ in 0..3 {
        if std::fs::rename(building, dir).is_ok() {
            return;
        }
        if std::fs::read_to_string(dir.join(SENTINEL)).ok().as_deref() == Some(expected) {
            remove_if_present(building);
            return;
        }
        let outdated = temporary_sibling(dir, "outdated");
        if std::fs::rename(dir, &outdated).is_ok() {
            remove_if_present(&outdated);
        }
    }
    panic!(
        "cannot move the Python readers from {} to {}",
        building.display(),
        dir.display()
    );
}

/// A path beside `dir` that no other process uses.
fn temporary_sibling(dir: &Path, what: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = dir.file_name().unwrap().to_string_lossy();
    dir.with_file_name(format!("{name}.{what}-{}-{nanos}", std::process::id()))
}

fn remove_if_present(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `command`; an error says what ran and what it printed when it fails.
fn run(command: &mut Command) -> Result<Output, String> {
    let shown = format!("{command:?}");
    match command.output() {
        Ok(output) if output.status.success() => Ok(output),
        Ok(output) => Err(format!(
            "{shown} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )),
        Err(error) => Err(format!("{shown} did not start: {error}")),
    }
}
