//! A real S3 API for the remote cache tests: moto's server on 127.0.0.1, on a port of its own.
//!
//! moto (`pip install 'moto[server]'`, provisioned by [`super::python::moto`] on first use) keeps
//! buckets in memory and implements conditional writes (`If-None-Match: *` answered 412 when the
//! object exists), which the remote cache's put-if-absent relies on. Buckets and objects are
//! created, listed and damaged here with plain HTTP requests (moto does not check signatures), so
//! the tests see the bucket independently of the code under test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running moto server; stopped when dropped.
pub struct MotoServer {
    child: Option<Child>,
    port: u16,
}

impl MotoServer {
    /// Starts moto on a free port.
    pub fn start() -> MotoServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        MotoServer::start_on(port)
    }

    /// Starts moto on `port` (to bring a stopped server back at the same address).
    pub fn start_on(port: u16) -> MotoServer {
        let mut command = super::python::moto().python();
        command
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().expect("start moto_server");
        let server = MotoServer {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.request("GET", "/", b"").is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its buckets are gone with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = self
            .request("PUT", &format!("/{bucket}"), b"")
            .expect("create the bucket");
        assert_eq!(status, 200, "create bucket {bucket}: {body}");
    }

    /// Every object key in `bucket` under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{bucket}?list-type=2&prefix={prefix}");
            if let Some(token) = &token {
                path.push_str(&format!("&continuation-token={}", encode(token)));
            }
            let (status, body) = self.request("GET", &path, b"").expect("list the bucket");
            assert_eq!(status, 200, "list {bucket}: {body}");
            keys.extend(between(&body, "<Key>", "</Key>"));
            token = between(&body, "<NextContinuationToken>", "</NextContinuationToken>")
                .into_iter()
                .next();
            if token.is_none() {
                return keys;
            }
        }
    }

    /// An object's bytes (through boto3: moto refuses unsigned reads of objects).
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.boto3(
            "import sys; sys.stdout.buffer.write(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())",
            &[bucket, key],
            &[],
        )
    }

    /// Replaces an object's bytes (through boto3).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        self.boto3(
            "import sys; s3.put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=sys.stdin.buffer.read())",
            &[bucket, key],
            bytes,
        );
    }

    /// Runs `script` with `s3`, a boto3 client of this server, and `args`; its stdout.
    fn boto3(&self, script: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let prelude = format!(
            "import boto3; s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n",
            self.endpoint()
        );
        let mut child = super::python::moto()
            .python()
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python with boto3");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write stdin");
        let output = child.wait_with_output().expect("wait for python");
        assert!(
            output.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        self.request_bytes(method, path, body)
            .map(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// One HTTP/1.1 request with `Connection: close`; the status and the body.
    fn request_bytes(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no HTTP response"))?;
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        let mut body = response[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Ok((status, body))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn between(text: &str, open: &str, close: &str) -> Vec<String> {
    text.split(open)
        .skip(1)
        .filter_map(|part| part.split(close).next().map(str::to_string))
        .collect()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
    out
}
