//! The mock's batch APIs (OpenAI Files + Batches, Anthropic Message Batches), driven over HTTP as a
//! client would: every answer is the one the synchronous endpoint gives for the same request and
//! key; delay, per-request errors, expiry with partial output, cancellation and random result order
//! behave as configured; custom ids are counted across batches.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::mock_llm::{BatchConfig, MockConfig, MockServer};

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn mock(batch: BatchConfig) -> MockServer {
    MockServer::start(MockConfig {
        batch,
        ..MockConfig::default()
    })
}

fn chat_body(i: usize) -> Value {
    json!({"model": "mock", "max_tokens": 50,
        "messages": [{"role": "user", "content": format!("Write a subject for ticket {i} about a refund.")}]})
}

async fn get(client: &reqwest::Client, url: String) -> (u16, String) {
    let response = client.get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post(client: &reqwest::Client, url: String, body: &Value) -> Value {
    let response = client.post(url).json(body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

/// Uploads `lines` as a batch input file; its id.
async fn upload(client: &reqwest::Client, mock: &MockServer, lines: &[Value]) -> String {
    let boundary = "mockboundary42";
    let jsonl: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{jsonl}\r\n--{boundary}--\r\n"
    );
    let response = client
        .post(format!("{}/files", mock.base_url()))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let file: Value = response.json().await.unwrap();
    assert_eq!(file["purpose"], "batch");
    file["id"].as_str().unwrap().to_string()
}

/// Creates an OpenAI batch of `n` chat requests with custom ids `k0`, `k1`, ...
async fn openai_batch(client: &reqwest::Client, mock: &MockServer, n: usize) -> String {
    let lines: Vec<Value> = (0..n)
        .map(|i| {
            json!({"custom_id": format!("k{i}"), "method": "POST",
            "url": "/v1/chat/completions", "body": chat_body(i)})
        })
        .collect();
    let file = upload(client, mock, &lines).await;
    let batch = post(
        client,
        format!("{}/batches", mock.base_url()),
        &json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"ticketbuild_run": "r1"}}),
    )
    .await;
    batch["id"].as_str().unwrap().to_string()
}

/// Polls an OpenAI batch until it leaves `in_progress`.
async fn wait_openai(client: &reqwest::Client, mock: &MockServer, id: &str) -> Value {
    for _ in 0..200 {
        let (_, text) = get(client, format!("{}/batches/{id}", mock.base_url())).await;
        let batch: Value = serde_json::from_str(&text).unwrap();
        if batch["status"] != "in_progress" {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("batch {id} never ended");
}

async fn file_lines(client: &reqwest::Client, mock: &MockServer, id: &Value) -> Vec<Value> {
    let (status, text) = get(
        client,
        format!("{}/files/{}/content", mock.base_url(), id.as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_batch_answers_as_the_synchronous_endpoint_with_errors_in_their_file() {
    let mock = mock(BatchConfig {
        complete_after_ms: 300,
        error_share: 0.25,
        shuffle: true,
        ..BatchConfig::default()
    });
    let client = client();
    let id = openai_batch(&client, &mock, 20).await;
    let (_, text) = get(&client, format!("{}/batches/{id}", mock.base_url())).await;
    let running: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(running["status"], "in_progress");
    assert!(running["output_file_id"].is_null());

    let batch = wait_openai(&client, &mock, &id).await;
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["metadata"]["ticketbuild_run"], "r1");
    let output = file_lines(&client, &mock, &batch["output_file_id"]).await;
    let errors = file_lines(&client, &mock, &batch["error_file_id"]).await;
    assert_eq!(output.len() + errors.len(), 20);
    assert_eq!(batch["request_counts"]["failed"], errors.len());
    assert!(
        !errors.is_empty() && !output.is_empty(),
        "{} errors",
        errors.len()
    );
    for line in &errors {
        assert_eq!(line["response"]["status_code"], 500);
    }
    // Random order: not the order of submission.
    let mut order = ids(&output);
    order.extend(ids(&errors));
    let submitted: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    assert_ne!(order, submitted);
    order.sort();
    let mut sorted = submitted.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    // Each answer is the synchronous endpoint's for the same request and key.
    for line in &output {
        let custom_id = line["custom_id"].as_str().unwrap();
        let i: usize = custom_id[1..].parse().unwrap();
        let response = client
            .post(format!("{}/chat/completions", mock.base_url()))
            .header("x-ticketbuild-key", custom_id)
            .json(&chat_body(i))
            .send()
            .await
            .unwrap();
        let direct: Value = response.json().await.unwrap();
        assert_eq!(
            line["response"]["body"]["choices"][0]["message"]["content"],
            direct["choices"][0]["message"]["content"]
        );
    }
    // Listed, and custom ids counted across batches.
    let (_, list) = get(&client, format!("{}/batches", mock.base_url())).await;
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert!(mock.batch_submissions().values().all(|n| *n == 1));
    openai_batch(&client, &mock, 3).await;
    assert_eq!(mock.batch_submissions()["k0"], 2);
    assert_eq!(mock.batches_created(), 2);
    assert_eq!(
        mock.requests(),
        output.len() as u64,
        "batch traffic counted as model calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_openai_batch_has_its_done_share_in_the_output_and_the_rest_expired() {
    let mock = mock(BatchConfig {
        complete_after_ms: 50,
        expire_done_share: Some(0.6),
        ..BatchConfig::default()
    });
    let client = client();
    let id = openai_batch(&client, &mock, 10).await;
    let batch = wait_openai(&client, &mock, &id).await;
    assert_eq!(batch["status"], "expired");
    let output = file_lines(&client, &mock, &batch["output_file_id"]).await;
    let errors = file_lines(&client, &mock, &batch["error_file_id"]).await;
    assert_eq!(ids(&output), ["k0", "k1", "k2", "k3", "k4", "k5"]);
    assert_eq!(errors.len(), 4);
    assert!(errors.iter().all(|e| e["error"]["code"] == "batch_expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_openai_batch_keeps_what_was_done_before_the_cancel() {
    let mock = mock(BatchConfig {
        complete_after_ms: 2_000,
        ..BatchConfig::default()
    });
    let client = client();
    let id = openai_batch(&client, &mock, 10).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let cancelled = post(
        &client,
        format!("{}/batches/{id}/cancel", mock.base_url()),
        &json!({}),
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");
    let output = file_lines(&client, &mock, &cancelled["output_file_id"]).await;
    let errors = file_lines(&client, &mock, &cancelled["error_file_id"]).await;
    assert!((1..10).contains(&output.len()), "{} done", output.len());
    assert_eq!(output.len() + errors.len(), 10);
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "batch_cancelled")
    );
    // Later reads agree.
    let again = wait_openai(&client, &mock, &id).await;
    assert_eq!(again["request_counts"]["completed"], output.len());
}

fn message_params(i: usize) -> Value {
    json!({"model": "mock", "max_tokens": 60,
        "messages": [{"role": "user", "content": format!("Write the first response to ticket {i}.")}]})
}

async fn anthropic_batch(client: &reqwest::Client, mock: &MockServer, n: usize) -> String {
    let requests: Vec<Value> = (0..n)
        .map(|i| json!({"custom_id": format!("a{i}"), "params": message_params(i)}))
        .collect();
    let batch = post(
        client,
        format!("{}/messages/batches", mock.base_url()),
        &json!({"requests": requests}),
    )
    .await;
    assert_eq!(batch["processing_status"], "in_progress");
    batch["id"].as_str().unwrap().to_string()
}

async fn wait_anthropic(client: &reqwest::Client, mock: &MockServer, id: &str) -> Value {
    for _ in 0..200 {
        let (_, text) = get(client, format!("{}/messages/batches/{id}", mock.base_url())).await;
        let batch: Value = serde_json::from_str(&text).unwrap();
        if batch["processing_status"] == "ended" {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("batch {id} never ended");
}

async fn results(client: &reqwest::Client, mock: &MockServer, id: &str) -> Vec<Value> {
    let (status, text) = get(
        client,
        format!("{}/messages/batches/{id}/results", mock.base_url()),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn kinds(results: &[Value], kind: &str) -> usize {
    results
        .iter()
        .filter(|r| r["result"]["type"] == kind)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_message_batches_succeed_err_expire_and_cancel_as_told() {
    // Succeeded and errored, as the synchronous endpoint would answer.
    let mock_ok = mock(BatchConfig {
        complete_after_ms: 100,
        error_share: 0.3,
        shuffle: true,
        ..BatchConfig::default()
    });
    let client = client();
    let id = anthropic_batch(&client, &mock_ok, 12).await;
    let (status, _) = get(
        &client,
        format!("{}/messages/batches/{id}/results", mock_ok.base_url()),
    )
    .await;
    assert_eq!(status, 400, "results before the batch ended");
    let batch = wait_anthropic(&client, &mock_ok, &id).await;
    let all = results(&client, &mock_ok, &id).await;
    assert_eq!(all.len(), 12);
    assert_eq!(batch["request_counts"]["errored"], kinds(&all, "errored"));
    assert_eq!(
        batch["request_counts"]["succeeded"],
        kinds(&all, "succeeded")
    );
    assert!(kinds(&all, "errored") > 0 && kinds(&all, "succeeded") > 0);
    for result in all.iter().filter(|r| r["result"]["type"] == "succeeded") {
        let custom_id = result["custom_id"].as_str().unwrap();
        let i: usize = custom_id[1..].parse().unwrap();
        let response = client
            .post(format!("{}/messages", mock_ok.base_url()))
            .header("x-ticketbuild-key", custom_id)
            .json(&message_params(i))
            .send()
            .await
            .unwrap();
        let direct: Value = response.json().await.unwrap();
        assert_eq!(result["result"]["message"]["content"], direct["content"]);
    }
    let (_, list) = get(&client, format!("{}/messages/batches", mock_ok.base_url())).await;
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap()["data"][0]["id"],
        id.as_str()
    );

    // Expired with 60% done.
    let mock_expiring = mock(BatchConfig {
        complete_after_ms: 50,
        expire_done_share: Some(0.6),
        ..BatchConfig::default()
    });
    let id = anthropic_batch(&client, &mock_expiring, 10).await;
    let batch = wait_anthropic(&client, &mock_expiring, &id).await;
    assert_eq!(batch["request_counts"]["expired"], 4);
    let all = results(&client, &mock_expiring, &id).await;
    assert_eq!((kinds(&all, "succeeded"), kinds(&all, "expired")), (6, 4));

    // Cancelled part-way.
    let mock_slow = mock(BatchConfig {
        complete_after_ms: 2_000,
        ..BatchConfig::default()
    });
    let id = anthropic_batch(&client, &mock_slow, 10).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let cancelled = post(
        &client,
        format!("{}/messages/batches/{id}/cancel", mock_slow.base_url()),
        &json!({}),
    )
    .await;
    assert_eq!(cancelled["processing_status"], "ended");
    let all = results(&client, &mock_slow, &id).await;
    let done = kinds(&all, "succeeded");
    assert!((1..10).contains(&done), "{done} done");
    assert_eq!(kinds(&all, "canceled"), 10 - done);
}
