//! Headless Chromium for tests that look at an HTML report the way a reader's browser does.
//!
//! [`Page::open`] starts Debian's `chromedriver` on a free 127.0.0.1 port, asks it for a headless
//! Chromium session with a private profile, loads a local file from its `file://` URL and waits
//! for the load to complete. The page then runs JavaScript, lists the console errors and the
//! network requests it made, takes a screenshot and prints to PDF. Dropping it ends the session
//! (which closes Chromium) and stops chromedriver.
//!
//! Why WebDriver: it is JSON over plain HTTP, which reqwest and serde_json (already dependencies)
//! speak, and chromedriver collects the console and the DevTools network events into logs for us.
//! Driving the Chrome DevTools Protocol directly would need a WebSocket client, which is not a
//! dependency, and `chromium --dump-dom` only prints the DOM: it cannot run a script after the
//! load, and says nothing of console errors or requests.
//!
//! The tests need `apt install chromium chromium-driver`; without them [`Page::open`] panics, so a
//! missing browser fails the tests instead of silently skipping them. Use a [`Page`] from a plain
//! `#[test]`: it blocks on its own small tokio runtime, which cannot run inside another one.

use std::cell::RefCell;
use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest wait for one chromedriver call (starting Chromium and printing are the slow ones).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for chromedriver to listen, and for the page to finish loading.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A page loaded in headless Chromium; the browser and chromedriver stop when it is dropped.
pub struct Page {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    driver: Child,
    /// `http://127.0.0.1:{port}`
    base: String,
    /// `{base}/session/{id}`, empty until the session exists.
    session: String,
    /// The page's own URL, as the browser reports it (`location.href`).
    url: String,
    /// Log entries read so far: chromedriver empties a log when it is read.
    browser_log: RefCell<Vec<Value>>,
    performance_log: RefCell<Vec<Value>>,
    /// chromedriver's own log and Chromium's profile.
    dir: tempfile::TempDir,
}

impl Page {
    /// Starts chromedriver and a headless Chromium session, loads `file://` + the absolute path
    /// of `path` and waits until `document.readyState` is `"complete"`.
    pub fn open(path: &Path) -> Page {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: browser tests need `apt install chromium chromium-driver`"
            );
        }
        let path = std::fs::canonicalize(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let dir = tempfile::tempdir().expect("create a temp dir for the browser");
        // chromedriver has no reliable --port=0: take a free port and hand it over.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        let log =
            File::create(dir.path().join("chromedriver.log")).expect("create chromedriver.log");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("share chromedriver.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        // reqwest is built without a TLS crypto provider; this only talks plain HTTP, but building
        // a client needs one. Another test may have installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut page = Page {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("start a tokio runtime"),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("build an HTTP client"),
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            url: String::new(),
            browser_log: RefCell::default(),
            performance_log: RefCell::default(),
            dir,
        };
        // From here on a panic drops `page`, which stops chromedriver.
        page.wait_until_ready();
        let profile = page.dir.path().join("profile");
        let created = page.send(
            Method::POST,
            &format!("{}/session", page.base),
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-dev-shm-usage",
                        // A 1280x1857 viewport: headless Chromium keeps room for its toolbar.
                        "--window-size=1280,2000",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
                "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
            }}})),
        );
        let id = created["sessionId"]
            .as_str()
            .expect("chromedriver names the session");
        page.session = format!("{}/session/{id}", page.base);
        // Chromium starts on its new-tab page (chromedriver gives it no start URL, and turns a
        // URL among the args into a switch): leave it and drop what it logged, dozens of chrome://
        // requests, so that the logs hold only what the file does.
        page.call(Method::POST, "url", Some(json!({"url": "about:blank"})));
        for kind in ["browser", "performance"] {
            page.call(Method::POST, "se/log", Some(json!({ "type": kind })));
        }
        let url = file_url(&path);
        // Returns once the page has loaded, but the wait below does not rely on it.
        page.call(Method::POST, "url", Some(json!({ "url": url })));
        let deadline = Instant::now() + START_DEADLINE;
        while page.eval("return document.readyState;") != "complete" {
            assert!(
                Instant::now() < deadline,
                "{url} did not finish loading in {START_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let href = page.eval("return location.href;");
        page.url = href.as_str().unwrap_or(&url).to_owned();
        page
    }

    /// Runs a JavaScript function body (`return ...;`) in the page and returns its value.
    pub fn eval(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Messages the browser logged so far at level SEVERE: `console.error`, uncaught exceptions
    /// and resources that failed to load.
    pub fn console_errors(&self) -> Vec<String> {
        self.log("browser", &self.browser_log)
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// URLs of every request the page made so far except for itself, each once: http(s),
    /// WebSocket and other `file:` URLs. `data:`, `blob:` and `about:` URLs are embedded, not
    /// fetched, so left out.
    pub fn requests(&self) -> Vec<String> {
        let mut urls = Vec::new();
        for entry in self.log("performance", &self.performance_log) {
            // Each message is a DevTools event, as JSON in a string.
            let event: Value = serde_json::from_str(entry["message"].as_str().unwrap_or_default())
                .expect("a performance log message is JSON");
            let url = match event["message"]["method"].as_str() {
                Some("Network.requestWillBeSent") => &event["message"]["params"]["request"]["url"],
                Some("Network.webSocketCreated") => &event["message"]["params"]["url"],
                _ => continue,
            };
            let url = url.as_str().unwrap_or_default();
            let embedded = ["data:", "blob:", "about:"]
                .iter()
                .any(|s| url.starts_with(s));
            if !embedded && url != self.url && !urls.iter().any(|seen| seen == url) {
                urls.push(url.to_owned());
            }
        }
        urls
    }

    /// Writes a PNG screenshot of what the window shows (1280 pixels wide) to `to`.
    pub fn screenshot(&self, to: &Path) {
        let png = self.call(Method::GET, "screenshot", None);
        let png = base64_decode(png.as_str().expect("a base64 screenshot"));
        std::fs::write(to, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", to.display()));
    }

    /// Prints the page to PDF, backgrounds included, and returns the PDF's bytes.
    pub fn print_pdf(&self) -> Vec<u8> {
        let pdf = self.call(Method::POST, "print", Some(json!({"background": true})));
        base64_decode(pdf.as_str().expect("a base64 PDF"))
    }

    /// Every entry of a log so far: what was read before, then what chromedriver has now.
    fn log(&self, kind: &str, read: &RefCell<Vec<Value>>) -> Vec<Value> {
        let new = self.call(Method::POST, "se/log", Some(json!({ "type": kind })));
        let mut read = read.borrow_mut();
        read.extend(new.as_array().cloned().unwrap_or_default());
        read.clone()
    }

    /// Polls chromedriver's `/status` until it is ready.
    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let url = format!("{}/status", self.base);
            // A short timeout: should another program hold the port, it may accept and not answer.
            let status = self.try_send(Method::GET, &url, None, Duration::from_secs(1));
            if status.as_ref().is_ok_and(|status| status["ready"] == true) {
                return;
            }
            let exited = self.driver.try_wait().expect("check on chromedriver");
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("chromedriver.log"));
                panic!(
                    "chromedriver did not start ({exited:?}, last answer {status:?}); its log:\n{}",
                    log.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A WebDriver command on the session, e.g. `call(Method::GET, "screenshot", None)`.
    fn call(&self, method: Method, command: &str, body: Option<Value>) -> Value {
        self.send(method, &format!("{}/{command}", self.session), body)
    }

    /// Sends a request to chromedriver and returns the answer's `value`; panics with
    /// chromedriver's error when there is one.
    fn send(&self, method: Method, url: &str, body: Option<Value>) -> Value {
        self.try_send(method.clone(), url, body, CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("chromedriver {method} {url}: {e}"))
    }

    /// [`Page::send`], with chromedriver's error (or no answer, before it listens) as a message.
    fn try_send(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method, url).timeout(timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, mut answer) = self
            .runtime
            .block_on(async {
                let response = request.send().await?;
                Ok::<_, reqwest::Error>((response.status(), response.json::<Value>().await?))
            })
            .map_err(|e| e.to_string())?;
        let value = answer["value"].take();
        if status.is_success() {
            Ok(value)
        } else {
            let text = |key: &str| value[key].as_str().unwrap_or_default().to_owned();
            Err(format!("{status}, {}: {}", text("error"), text("message")))
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closes Chromium; chromedriver waits for its processes to exit.
            let _ = self.try_send(Method::DELETE, &self.session, None, Duration::from_secs(20));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `file://` and the absolute path, with everything but unreserved characters and `/` escaped.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for byte in path.to_str().expect("a UTF-8 path").bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                url.push(char::from(byte))
            }
            _ => url.push_str(&format!("%{byte:02X}")),
        }
    }
    url
}

/// Standard base64 (WebDriver's encoding of screenshots and PDFs), padding optional.
fn base64_decode(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut count) = (0u32, 0);
    for c in text.bytes().filter(|c| !b"= \r\n".contains(c)) {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: byte {c}"),
        };
        bits = (bits << 6 | u32::from(sextet)) & 0xFFFF;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
        }
    }
    bytes
}
