//! Micro benchmarks of the hot paths: `cargo bench --bench hot_paths`.
//!
//! Key derivation, prompt rendering, cache get and put, the offline model for one ticket, and
//! writing 1,000 rows. The macro benchmark (whole builds) is `bench/offline.sh`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ticketbuild::cache::{Artifact, ArtifactStore, RecordedRequest, SledStore};
use ticketbuild::config::{Config, Overrides, Params};
use ticketbuild::cost::Usage;
use ticketbuild::engine::{BuildOptions, Engine};
use ticketbuild::graph::Graph;
use ticketbuild::key::{ArtifactKey, KeyInput};
use ticketbuild::offline::{OfflineRequest, generate};
use ticketbuild::value::{NodeOutput, OutputKind};

fn main() {
    divan::main();
}

/// The example project copied into a temp dir, loaded.
fn example(rows: u64, dir: &Path) -> (Config, Graph) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("prompts")).unwrap();
    for entry in std::fs::read_dir(root.join("prompts")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("prompts").join(entry.file_name())).unwrap();
    }
    let toml = std::fs::read_to_string(root.join("dataset.toml"))
        .unwrap()
        .replace("rows = 200", &format!("rows = {rows}"));
    let path = dir.join("dataset.toml");
    std::fs::write(&path, &toml).unwrap();
    let config = Config::parse(&path, toml, &Overrides::default()).unwrap();
    let graph = Graph::load(&config).unwrap();
    (config, graph)
}

#[divan::bench]
fn key_derivation(bencher: divan::Bencher) {
    let params = Params {
        temperature: Some(0.7),
        max_tokens: Some(400),
        ..Params::default()
    };
    let user = "Write the body of a support email about a VPN that keeps dropping. ".repeat(12);
    bencher.bench(|| {
        KeyInput {
            provider: "openai",
            base_url: None,
            model: "gpt-4o-mini",
            params: &params,
            output: &OutputKind::Text,
            system: Some("You are a customer writing to a support desk."),
            user: divan::black_box(&user),
            offline: None,
            sample_seed: 42,
            draw: 0,
        }
        .key()
    });
}

#[divan::bench]
fn render_first_response_prompt(bencher: divan::Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let (_config, graph) = example(10, dir.path());
    let node = graph.node("first_response").unwrap();
    let mut context = BTreeMap::new();
    for (k, v) in [
        ("queue", "Technical Support"),
        ("type", "Incident"),
        ("priority", "high"),
        ("business_type", "Online retailer"),
        ("topic", "VPN connection keeps dropping"),
        ("language", "DE"),
        ("language_name", "German"),
        ("ticket_id", "123456789012"),
    ] {
        context.insert(k.to_string(), minijinja::Value::from(v));
    }
    let paraphrase = BTreeMap::from([
        ("subject".to_string(), "VPN drops again".to_string()),
        (
            "body".to_string(),
            "Hello, our VPN drops every few minutes. ".repeat(8),
        ),
    ]);
    context.insert(
        "paraphrase".into(),
        minijinja::Value::from(paraphrase.clone()),
    );
    context.insert("translation".into(), minijinja::Value::from(paraphrase));
    let context = minijinja::Value::from(context);
    bencher.bench(|| graph.render(node, divan::black_box(&context)).unwrap());
}

fn artifact(i: u64) -> Artifact {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&i.to_le_bytes());
    Artifact {
        key: ArtifactKey(key),
        node: "body".into(),
        output: NodeOutput::Text("Hello, our VPN drops every few minutes. ".repeat(10)),
        usage: Usage::default(),
        cost_usd: Some(0.0),
        computed_cost_usd: Some(0.0),
        price: None,
        served_model: "ticketbuild-offline-1".into(),
        created_unix_ms: 1,
        latency_ms: 0,
        upstream: vec![("topic".into(), ArtifactKey([7; 32]))],
        request: RecordedRequest {
            user: "Write the body of a support email. ".repeat(20),
            ..RecordedRequest::default()
        },
        key_fields: None,
    }
}

#[divan::bench]
fn cache_put(bencher: divan::Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut i = 0u64;
    bencher.bench_local(|| {
        i += 1;
        store.put(i, &artifact(i)).unwrap();
    });
}

#[divan::bench]
fn cache_get(bencher: divan::Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    for i in 0..10_000 {
        store.put(i, &artifact(i)).unwrap();
    }
    let mut i = 0u64;
    bencher.bench_local(|| {
        i = (i + 7919) % 10_000;
        store.get(i, &artifact(i).key).unwrap()
    });
}

#[divan::bench]
fn offline_ticket_all_nodes(bencher: divan::Bencher) {
    let mut seed = 0u64;
    bencher.bench_local(|| {
        seed += 1;
        let mut inputs = BTreeMap::from([
            ("queue".to_string(), serde_json::json!("Technical Support")),
            ("type".to_string(), serde_json::json!("Incident")),
            ("priority".to_string(), serde_json::json!("high")),
            ("language".to_string(), serde_json::json!("FR")),
        ]);
        let ask = |task: &str, inputs: &BTreeMap<String, serde_json::Value>| {
            generate(&OfflineRequest {
                task,
                inputs,
                sample_seed: seed,
                draw: 0,
            })
            .unwrap()
        };
        let topic = ask("topic", &inputs);
        if let ticketbuild::offline::OfflineOutput::Text(t) = topic {
            inputs.insert("topic".into(), serde_json::json!(t));
        }
        for task in ["subject", "body", "tags", "first_response"] {
            divan::black_box(ask(task, &inputs));
        }
        if let ticketbuild::offline::OfflineOutput::Json(p) = ask("paraphrase", &inputs) {
            inputs.insert("paraphrase".into(), serde_json::json!(p));
        }
        ask("translation", &inputs)
    });
}

/// A whole build of 1,000 tickets from a full cache with every format written: reassembly cost.
#[divan::bench(sample_count = 5)]
fn reassemble_1000_rows_all_formats(bencher: divan::Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let (config, graph) = example(1000, dir.path());
    let config = Arc::new(config);
    let graph = Arc::new(graph);
    let store: Arc<dyn ArtifactStore> =
        Arc::new(SledStore::open(&dir.path().join("cache")).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let build = |store: Arc<dyn ArtifactStore>| {
        let engine = Engine::new(
            Arc::clone(&config),
            Arc::clone(&graph),
            store,
            &ticketbuild::provider::Secrets::default(),
            BuildOptions::default(),
        )
        .unwrap();
        runtime.block_on(Arc::new(engine).build(None)).unwrap()
    };
    build(Arc::clone(&store));
    bencher.bench_local(|| build(Arc::clone(&store)));
}
