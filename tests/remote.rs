//! The shared remote cache (`[cache.remote]`) against a real S3 API (moto's server on 127.0.0.1)
//! and sharded builds merged: what a team sharing one bucket sees.

use std::process::Command;

use crate::support::mock_llm::{MockConfig, MockServer};
use crate::support::s3::MotoServer;
use crate::support::{Project, Run, example_on, total};

const BUCKET: &str = "team-cache";

/// The example on `mock` with `rows` tickets and the remote cache at `s3://BUCKET/PREFIX`; `extra`
/// adds lines to `[cache.remote]`.
fn shared_project(mock: &MockServer, rows: u64, prefix: &str, extra: &str) -> Project {
    let p = example_on(mock, rows, 16, "");
    let mut text = p.read("dataset.toml");
    text.push_str(&format!(
        "\n[cache.remote]\nurl = \"s3://{BUCKET}/{prefix}\"\n{extra}\n"
    ));
    p.write("dataset.toml", &text);
    p
}

/// `ticketbuild ARGS` in `p` with the standard AWS variables pointing at `s3`.
fn with_s3(p: &Project, s3: &MotoServer, args: &[&str]) -> Command {
    let mut command = p.command(args);
    command
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", s3.endpoint())
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE");
    command
}

fn run_command(command: &mut Command) -> Run {
    Run::from(command.output().expect("run ticketbuild"))
}

/// `build --json` in `p` against `s3`; panics unless it succeeded.
fn build(p: &Project, s3: &MotoServer, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec!["build", "--json"];
    args.extend_from_slice(extra);
    let run = run_command(&mut with_s3(p, s3, &args));
    assert_eq!(run.code, 0, "build failed:\n{}", run.stderr);
    (
        serde_json::from_str(&run.stdout).expect("the summary is JSON"),
        run.stderr,
    )
}

/// The artifact objects in the bucket under `prefix`.
fn objects(s3: &MotoServer, prefix: &str) -> Vec<String> {
    s3.keys(BUCKET, &format!("{prefix}/v1/"))
        .into_iter()
        .filter(|k| !k.ends_with("/.probe"))
        .collect()
}

fn remote_count(summary: &serde_json::Value, field: &str) -> u64 {
    summary["remote"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no remote.{field} in {}", summary["remote"]))
}

#[test]
fn a_second_project_builds_from_the_bucket_without_calling_a_model() {
    let s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let mock = MockServer::start(MockConfig::default());
    let first = shared_project(&mock, 500, "shared", "");
    let (summary, _) = build(&first, &s3, &[]);
    let paid = mock.requests();
    let generated = total(&summary, "generated");
    assert!(paid > 0 && generated > 0);
    assert_eq!(summary["remote"]["access"], "read-write");
    assert_eq!(remote_count(&summary, "uploaded"), generated);
    assert_eq!(objects(&s3, "shared").len() as u64, generated);

    // Another machine: its own (empty) local cache, the same bucket.
    let second = shared_project(&mock, 500, "shared", "");
    let (summary, _) = build(&second, &s3, &[]);
    assert_eq!(mock.requests(), paid, "the second project called the model");
    assert_eq!(total(&summary, "generated"), 0);
    assert_eq!(remote_count(&summary, "hits"), generated);
    assert_eq!(remote_count(&summary, "uploaded"), 0);
    assert_eq!(first.snapshot("out"), second.snapshot("out"));

    // The hits are counted where `cache stats` shows them.
    let stats = run_command(&mut with_s3(&second, &s3, &["cache", "stats"]));
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    assert!(
        stats
            .stdout
            .contains(&format!("hits:              {generated}")),
        "{}",
        stats.stdout
    );
}

#[test]
fn a_read_only_remote_is_used_and_never_written() {
    let s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let mock = MockServer::start(MockConfig::default());
    let writer = shared_project(&mock, 30, "ro", "");
    let (summary, _) = build(&writer, &s3, &[]);
    let stored = objects(&s3, "ro");
    assert_eq!(stored.len() as u64, total(&summary, "generated"));

    // 40 tickets read-only: the first 30 come from the bucket, 10 are paid for, none goes up.
    let reader = shared_project(&mock, 40, "ro", "mode = \"read-only\"");
    let before = mock.requests();
    let (summary, _) = build(&reader, &s3, &[]);
    assert_eq!(summary["remote"]["access"], "read-only");
    assert_eq!(remote_count(&summary, "hits"), stored.len() as u64);
    assert!(total(&summary, "generated") > 0);
    assert_eq!(
        mock.requests() - before,
        total(&summary, "generated"),
        "only the 10 new tickets were paid for"
    );
    assert_eq!(remote_count(&summary, "uploaded"), 0);
    assert_eq!(
        objects(&s3, "ro"),
        stored,
        "a read-only build wrote to the bucket"
    );
    assert!(!reader.file("cache/remote/pending").exists());
}

#[test]
fn a_corrupt_object_is_reported_not_used_and_paid_for_once() {
    let s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let mock = MockServer::start(MockConfig::default());
    let first = shared_project(&mock, 20, "bad", "");
    build(&first, &s3, &[]);
    let stored = objects(&s3, "bad");
    // Damage one object: a byte of its payload flipped (its header still names the key).
    let victim = &stored[stored.len() / 2];
    let mut bytes = s3.get(BUCKET, victim);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    s3.put(BUCKET, victim, &bytes);

    let second = shared_project(&mock, 20, "bad", "");
    let before = mock.requests();
    let (summary, stderr) = build(&second, &s3, &[]);
    assert_eq!(
        mock.requests() - before,
        1,
        "the damaged answer is paid for exactly once"
    );
    assert_eq!(remote_count(&summary, "corrupt"), 1);
    assert_eq!(remote_count(&summary, "hits"), stored.len() as u64 - 1);
    assert!(stderr.contains("is corrupt and was not used"), "{stderr}");
    assert_eq!(first.snapshot("out"), second.snapshot("out"));
    // The object was replaced: a third machine finds everything intact.
    assert_ne!(s3.get(BUCKET, victim), bytes);
    let third = shared_project(&mock, 20, "bad", "");
    let before = mock.requests();
    let (summary, _) = build(&third, &s3, &[]);
    assert_eq!(mock.requests(), before);
    assert_eq!(remote_count(&summary, "corrupt"), 0);
}

#[test]
fn a_remote_that_stops_mid_build_never_fails_it_and_is_caught_up_later() {
    let mut s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let port = s3.port();
    let mock = MockServer::start(MockConfig {
        latency_ms: 5,
        ..MockConfig::default()
    });
    let p = shared_project(&mock, 300, "down", "");
    let child = with_s3(&p, &s3, &["build", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the build");
    // Stop S3 once the build is well under way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while mock.requests() < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "the build did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    s3.stop();
    let run = Run::from(child.wait_with_output().expect("wait for the build"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("stopped answering"), "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let deferred = remote_count(&summary, "deferred");
    assert!(deferred > 0, "{}", summary["remote"]);
    let generated = total(&summary, "generated");
    assert_eq!(
        remote_count(&summary, "uploaded") + deferred,
        generated,
        "every answer is uploaded or owed"
    );

    // Every answer is in the local cache: a rebuild (S3 still down) pays nothing.
    let paid = mock.requests();
    std::fs::remove_dir_all(p.file("out")).unwrap();
    let (summary, _) = build(&p, &s3, &[]);
    assert_eq!(mock.requests(), paid);
    assert_eq!(total(&summary, "generated"), 0);

    // S3 back (moto starts empty): the next build, with nothing to build, uploads what is owed.
    let s3 = MotoServer::start_on(port);
    s3.create_bucket(BUCKET);
    let (summary, _) = build(&p, &s3, &[]);
    assert_eq!(summary["up_to_date"], true);
    assert_eq!(remote_count(&summary, "from_earlier"), deferred);
    assert_eq!(remote_count(&summary, "uploaded"), deferred);
    assert_eq!(remote_count(&summary, "deferred"), 0);
    assert_eq!(objects(&s3, "down").len() as u64, deferred);
    assert!(!p.file("cache/remote/pending").exists());
}

#[test]
fn four_shards_merge_into_the_unsharded_dataset_and_merge_refuses_a_bad_set() {
    let s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let mock = MockServer::start(MockConfig::default());
    let rows = 200;
    // The reference: one unsharded build with its own cache and no remote.
    let reference = example_on(&mock, rows, 16, "");
    reference.build_json(&[]);

    // Four machines: one project folder each (own local cache), one bucket, one shards folder.
    let shards = tempfile::tempdir().unwrap();
    let shards_dir = shards.path().to_str().unwrap();
    let mut machines = Vec::new();
    for i in 1..=4 {
        let p = shared_project(&mock, rows, "sharded", "");
        let shard = format!("{i}/4");
        let (summary, _) = build(&p, &s3, &["--shard", &shard, "--shard-dir", shards_dir]);
        assert!(summary["tickets"].as_u64().unwrap() < rows);
        assert!(shards.path().join(format!("{i}-of-4/shard.json")).is_file());
        machines.push(p);
    }
    let merger = shared_project(&mock, rows, "sharded", "");
    let before = mock.requests();
    let run = run_command(&mut with_s3(&merger, &s3, &["merge", "--from", shards_dir]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("merging 4 shards"), "{}", run.stdout);
    assert_eq!(mock.requests(), before, "merge called the model");
    for file in ["tickets.parquet", "tickets.csv", "tickets.jsonl"] {
        assert_eq!(
            std::fs::read(merger.file(&format!("out/{file}"))).unwrap(),
            std::fs::read(reference.file(&format!("out/{file}"))).unwrap(),
            "{file} differs from the unsharded build"
        );
    }

    // The same from the bucket alone: the shards put their manifests there, and every answer.
    let remote_merger = shared_project(&mock, rows, "sharded", "");
    let run = run_command(&mut with_s3(
        &remote_merger,
        &s3,
        &["merge", "--remote", "--json"],
    ));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("merging 4 shards from s3://"),
        "{}",
        run.stderr
    );
    assert_eq!(mock.requests(), before, "merge --remote called the model");
    assert_eq!(remote_merger.snapshot("out"), merger.snapshot("out"));

    // A shard built from another prompt: merge names it and the prompt, writes nothing.
    let body = machines[1].read("prompts/body.jinja");
    machines[1].write("prompts/body.jinja", &format!("{body}\nKeep it brief.\n"));
    build(
        &machines[1],
        &s3,
        &["--shard", "2/4", "--shard-dir", shards_dir],
    );
    let fresh = shared_project(&mock, rows, "sharded", "");
    let run = fresh.run(&["merge", "--from", shards_dir]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("shard 2 of 4"), "{}", run.stderr);
    assert!(run.stderr.contains("prompts/body.jinja"), "{}", run.stderr);
    assert!(!fresh.file("out").exists());

    // A missing shard: named, with the command that builds it.
    std::fs::remove_dir_all(shards.path().join("3-of-4")).unwrap();
    let run = fresh.run(&["merge", "--from", shards_dir]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("shard 3 of 4 is missing; build it with `ticketbuild build --shard 3/4`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_shared_folder_works_as_the_remote_too() {
    let shared = tempfile::tempdir().unwrap();
    let url = url_of(shared.path());
    let mock = MockServer::start(MockConfig::default());
    let add_remote = |p: &Project| {
        let mut text = p.read("dataset.toml");
        text.push_str(&format!("\n[cache.remote]\nurl = \"{url}\"\n"));
        p.write("dataset.toml", &text);
    };
    let first = example_on(&mock, 20, 8, "");
    add_remote(&first);
    let summary = first.build_json(&[]);
    let generated = total(&summary, "generated");
    assert_eq!(remote_count(&summary, "uploaded"), generated);
    let paid = mock.requests();

    let second = example_on(&mock, 20, 8, "");
    add_remote(&second);
    let summary = second.build_json(&[]);
    assert_eq!(mock.requests(), paid);
    assert_eq!(remote_count(&summary, "hits"), generated);
    assert_eq!(first.snapshot("out"), second.snapshot("out"));
}

/// `file:///...` for a folder.
fn url_of(path: &std::path::Path) -> String {
    format!("file://{}", path.display())
}

#[test]
fn a_build_killed_mid_way_leaves_its_uploads_owed_and_the_next_build_makes_them() {
    let s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let mock = MockServer::start(MockConfig {
        latency_ms: 5,
        ..MockConfig::default()
    });
    let p = shared_project(&mock, 200, "killed", "");
    let mut child = with_s3(&p, &s3, &["build", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the build");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while mock.requests() < 400 {
        assert!(
            std::time::Instant::now() < deadline,
            "the build did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL the build");
    child.wait().unwrap();

    let (summary, _) = build(&p, &s3, &[]);
    assert!(
        remote_count(&summary, "from_earlier") > 0,
        "{}",
        summary["remote"]
    );
    assert_eq!(remote_count(&summary, "deferred"), 0);
    // Every answer the local cache holds, from both builds, is in the bucket.
    let stats = run_command(&mut with_s3(&p, &s3, &["cache", "stats"]));
    let entries: usize = stats
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("entries:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", stats.stdout));
    assert_eq!(objects(&s3, "killed").len(), entries);
    assert!(
        stats.stdout.contains("owed uploads:      0"),
        "{}",
        stats.stdout
    );
}

#[test]
fn a_missing_bucket_is_named_and_the_answers_wait_for_it() {
    let s3 = MotoServer::start();
    let mock = MockServer::start(MockConfig::default());
    let p = shared_project(&mock, 10, "later", "");
    let (summary, stderr) = build(&p, &s3, &[]);
    assert_eq!(summary["remote"]["access"], "unreachable");
    assert!(
        stderr.contains("the bucket does not exist") && stderr.lines().count() < 5,
        "{stderr}"
    );
    let generated = total(&summary, "generated");
    assert_eq!(remote_count(&summary, "deferred"), generated);
    // Once the bucket exists, the next build (nothing to build) uploads what was owed.
    s3.create_bucket(BUCKET);
    let (summary, _) = build(&p, &s3, &[]);
    assert_eq!(remote_count(&summary, "uploaded"), generated);
    assert_eq!(objects(&s3, "later").len() as u64, generated);
}

#[test]
fn merge_takes_the_complete_split_and_refuses_an_unfinished_or_damaged_shard() {
    // The offline model: no servers needed for what merge checks.
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", "rows = 40");
    for shard in ["1/4", "2/4", "3/4", "4/4", "1/2", "2/2"] {
        let run = p.run(&["build", "--shard", shard]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    // Shards of 4 and of 2 in one folder: the split merge takes is complete either way.
    let run = p.run(&["merge", "--cache", "merge-cache"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let merged = p.snapshot("out");
    let reference = Project::example();
    reference.edit("dataset.toml", "rows = 200", "rows = 40");
    reference.build_json(&[]);
    for file in ["tickets.parquet", "tickets.csv", "tickets.jsonl"] {
        let ours = merged.iter().find(|(name, _)| name == file).unwrap();
        assert_eq!(
            ours.1,
            std::fs::read(reference.file(&format!("out/{file}"))).unwrap()
        );
    }

    // A shard that did not finish (as after Ctrl-C) is named, not merged.
    for n in ["1-of-4", "3-of-4"] {
        let path = format!("out/shards/{n}/shard.json");
        let mut manifest: serde_json::Value = serde_json::from_str(&p.read(&path)).unwrap();
        if n == "1-of-4" {
            manifest["written"] = serde_json::json!(0);
        }
        p.write(&path, &serde_json::to_string_pretty(&manifest).unwrap());
    }
    std::fs::remove_dir_all(p.file("out/shards/1-of-2")).unwrap();
    let run = p.run(&["merge", "--cache", "merge-cache-2"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("shard 1 of 4"), "{}", run.stderr);
    assert!(run.stderr.contains("did not finish"), "{}", run.stderr);

    // A damaged length in a shard's artifacts: an error naming the file, not a crash.
    for n in 1..=4 {
        std::fs::remove_dir_all(p.file(&format!("out/shards/{n}-of-4"))).unwrap();
    }
    let path = p.file("out/shards/2-of-2/artifacts.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let other = p.run(&["build", "--shard", "1/2"]);
    assert_eq!(other.code, 0, "{}", other.stderr);
    let run = p.run(&["merge", "--cache", "merge-cache-3"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("more than the file holds"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

/// The shard (1-based) of ticket `index` among `count`, as ticketbuild assigns it.
fn shard_of(index: u64, count: u64) -> u64 {
    let hash = blake3::Hasher::new_derive_key("ticketbuild 2026-12-02 shard assignment v1")
        .update(&index.to_le_bytes())
        .finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap()) % count + 1
}

#[test]
fn a_shard_with_no_ticket_among_the_first_thousand_still_builds_its_own() {
    // Concurrency 1: tickets start at most 1,024 past the next one to write. A shard whose first
    // ticket lies beyond that must still build it.
    let (count, rows) = (2_000u64, 1_200u64);
    let shard = (1..=count)
        .find(|s| {
            (0..1_024).all(|i| shard_of(i, count) != *s)
                && (1_024..rows).any(|i| shard_of(i, count) == *s)
        })
        .expect("some shard owns only tickets past 1,024");
    let owned = (0..rows).filter(|i| shard_of(*i, count) == shard).count() as u64;
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", &format!("rows = {rows}"));
    p.edit("dataset.toml", "concurrency = 64", "concurrency = 1");
    let summary = p.build_json(&["--shard", &format!("{shard}/{count}")]);
    assert_eq!(summary["tickets"], owned);
    assert_eq!(summary["written"], owned);
}

#[test]
fn cache_push_uploads_what_was_paid_for_before_the_remote_was_set_up() {
    let s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let mock = MockServer::start(MockConfig::default());
    let before = example_on(&mock, 25, 8, "");
    let summary = before.build_json(&[]);
    let generated = total(&summary, "generated");
    // Only now does the team set up the remote.
    let mut text = before.read("dataset.toml");
    text.push_str(&format!(
        "\n[cache.remote]\nurl = \"s3://{BUCKET}/pushed\"\n"
    ));
    before.write("dataset.toml", &text);
    let run = run_command(&mut with_s3(&before, &s3, &["cache", "push"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("{generated} uploaded, 0 already there")),
        "{}",
        run.stdout
    );
    assert_eq!(objects(&s3, "pushed").len() as u64, generated);
    let again = run_command(&mut with_s3(&before, &s3, &["cache", "push"]));
    assert!(
        again
            .stdout
            .contains(&format!("0 uploaded, {generated} already there")),
        "{}",
        again.stdout
    );
    // A colleague builds it all from the bucket.
    let paid = mock.requests();
    let colleague = shared_project(&mock, 25, "pushed", "");
    colleague.edit("dataset.toml", "concurrency = 16", "concurrency = 8");
    let (summary, _) = build(&colleague, &s3, &[]);
    assert_eq!(mock.requests(), paid);
    assert_eq!(total(&summary, "generated"), 0);
}

#[test]
fn an_answer_forced_anew_replaces_the_remote_one() {
    let s3 = MotoServer::start();
    s3.create_bucket(BUCKET);
    let mock = MockServer::start(MockConfig::default());
    let p = shared_project(&mock, 4, "forced", "");
    build(&p, &s3, &[]);
    let before: Vec<(String, Vec<u8>)> = objects(&s3, "forced")
        .into_iter()
        .map(|k| {
            let bytes = s3.get(BUCKET, &k);
            (k, bytes)
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let (summary, _) = build(&p, &s3, &["--force", "first_response"]);
    let forced = crate::support::stat(&summary, "first_response", "generated");
    assert_eq!(forced, 4);
    // The regenerated answers (new times in their records) replaced the stored ones; nothing else
    // changed.
    let changed = before
        .iter()
        .filter(|(k, bytes)| s3.get(BUCKET, k) != *bytes)
        .count() as u64;
    assert_eq!(changed, forced);
    assert_eq!(remote_count(&summary, "uploaded"), forced);
}
