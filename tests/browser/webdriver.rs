//! The few W3C WebDriver calls the browser test needs, as JSON over HTTP to chromedriver.

use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{json, Value};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver listening on `base` (`http://127.0.0.1:PORT`).
pub struct Driver {
    http: Client,
    base: String,
}

/// One browser session.
pub struct Session {
    http: Client,
    url: String,
}

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// One WebDriver command; the `value` of the answer, or the driver's error.
async fn call(
    http: &Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
    let answer: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{method} {url}: HTTP {status}, not JSON ({e}): {text}"))?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    if !status.is_success() {
        let message = value["message"].as_str().unwrap_or(&text);
        return Err(format!(
            "{method} {url}: HTTP {status}: {} {message}",
            value["error"]
        ));
    }
    Ok(value)
}

impl Driver {
    pub fn new(port: u16) -> Self {
        Self {
            http: client(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until the driver's `/status` says it is ready, at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let url = format!("{}/status", self.base);
        loop {
            let last = match call(&self.http, Method::GET, &url, None).await {
                Ok(value) if value["ready"] == json!(true) => return Ok(()),
                Ok(value) => format!("not ready: {value}"),
                Err(e) => e,
            };
            if start.elapsed() > limit {
                return Err(format!(
                    "chromedriver did not become ready within {limit:?}: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a headless browser.
    pub async fn new_session(&self, binary: &str, args: &[String]) -> Result<Session, String> {
        let body = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": binary, "args": args },
                }
            }
        });
        let value = call(
            &self.http,
            Method::POST,
            &format!("{}/session", self.base),
            Some(body),
        )
        .await?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no sessionId in the new session's answer: {value}"))?;
        Ok(Session {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.base),
        })
    }
}

impl Session {
    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        call(&self.http, method, &format!("{}{path}", self.url), body).await
    }

    /// Opens `url` (returns once the page has loaded).
    pub async fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub async fn execute(&self, script: &str) -> Result<Value, String> {
        self.cmd(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// The element matching a CSS selector.
    pub async fn find(&self, css: &str) -> Result<String, String> {
        let value = self
            .cmd(
                Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        value[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no element reference for {css}: {value}"))
    }

    /// Types `text` into an element, as a user would.
    pub async fn send_keys(&self, element: &str, text: &str) -> Result<(), String> {
        self.cmd(
            Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    /// Clicks an element.
    pub async fn click(&self, element: &str) -> Result<(), String> {
        self.cmd(
            Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>, String> {
        let value = self.cmd(Method::GET, "/screenshot", None).await?;
        let text = value
            .as_str()
            .ok_or_else(|| format!("screenshot is not a string: {value}"))?;
        base64_decode(text)
    }

    /// Ends the session (the driver closes the browser).
    pub async fn quit(&self) -> Result<(), String> {
        self.cmd(Method::DELETE, "", None).await.map(drop)
    }
}

/// Standard base64 (RFC 4648, with padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = sextet(c).ok_or_else(|| format!("not base64: byte {c:#04x}"))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[test]
fn base64_decodes_the_rfc_4648_vectors() {
    for (text, plain) in [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYmFy", "foobar"),
    ] {
        assert_eq!(base64_decode(text).unwrap(), plain.as_bytes());
    }
}
