//! The page in a real browser: starts the `websocket` binary and drives Debian's headless
//! `chromium` through `chromedriver` (W3C WebDriver, JSON over HTTP) against it.
//!
//! The page connects and says so, shows the welcome and the pongs to its pings, the badge shows
//! the connection count and protection state, chat works from the form; on SIGTERM the page sees
//! the 1001 close and the server exits 0; started again on the same port, the server gets the page
//! back by itself.
//!
//! Needs `chromium` and `chromium-driver` (Debian packages). Without them the test prints SKIPPED
//! and passes, except when `CI=true`, where it fails. `CHROMIUM` and `CHROMEDRIVER` override the
//! paths (default `/usr/bin/chromium`, `/usr/bin/chromedriver`).
#![cfg(unix)]

mod support;
#[path = "browser/webdriver.rs"]
mod webdriver;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use support::free_port;
use support::process::{Proc, TempDir};
use webdriver::{Driver, Session};

/// The longest any one expected change may take to show.
const STEP: Duration = Duration::from_secs(15);
/// Where the screenshot goes.
const SCREENSHOT: &str = "/tmp/browser-test.png";
const CHAT: &str = "hello from chromium";

/// What the page shows, read in one go.
#[derive(Debug, Default, Deserialize)]
struct Page {
    /// One entry per line of the activity log (the text only; the time is an attribute).
    log: Vec<String>,
    /// `document.body.dataset.ws`: "open" or "closed".
    ws: String,
    connection: String,
    count: String,
    protection: String,
    expiry: String,
    expiry_iso: Option<String>,
    backend: String,
    draining: String,
    stale: bool,
}

const READ_PAGE: &str = r##"
const text = (id) => { const e = document.getElementById(id); return e ? e.textContent.trim() : "<missing #" + id + ">"; };
const expiry = document.getElementById("status-expiry");
const stale = document.getElementById("status-stale");
return {
  log: Array.from(document.querySelectorAll("#log > *"), (li) => li.textContent),
  ws: document.body.dataset.ws || "",
  connection: text("status-connection"),
  count: text("status-count"),
  protection: text("status-protection"),
  expiry: text("status-expiry"),
  expiry_iso: expiry ? expiry.getAttribute("datetime") : null,
  backend: text("status-backend"),
  draining: text("status-draining"),
  stale: stale ? !stale.hidden : false,
};
"##;

/// Everything the test started, so that failure diagnostics can show it and drop can stop it.
/// Fields drop in order: the browser session's driver (and with it the browser) goes before the
/// profile directory is removed.
struct Run {
    start: Instant,
    port: u16,
    http: reqwest::Client,
    milestones: Vec<(Duration, String)>,
    last_page: Option<Page>,
    session: Option<Session>,
    /// Every server started, the one that was stopped included (for its output).
    servers: Vec<Proc>,
    chromedriver: Option<Proc>,
    _profile: Option<TempDir>,
}

impl Run {
    fn mark(&mut self, what: &str) {
        let at = self.start.elapsed();
        println!("[{:>6.2}s] {what}", at.as_secs_f64());
        self.milestones.push((at, what.to_owned()));
    }

    fn session(&self) -> &Session {
        self.session.as_ref().expect("browser session")
    }

    fn server(&mut self) -> &mut Proc {
        self.servers.last_mut().expect("a server")
    }

    async fn read_page(&mut self) -> Result<&Page, String> {
        let value = self.session().execute(READ_PAGE).await?;
        let page: Page = serde_json::from_value(value.clone())
            .map_err(|e| format!("unexpected page snapshot ({e}): {value}"))?;
        Ok(self.last_page.insert(page))
    }

    /// Reads the page until `ready` holds, at most [`STEP`].
    async fn wait_page(&mut self, what: &str, ready: impl Fn(&Page) -> bool) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if ready(self.read_page().await?) {
                self.mark(what);
                return Ok(());
            }
            if start.elapsed() > STEP {
                return Err(format!("the page did not show {what} within {STEP:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's `/status` document.
    async fn server_status(&self) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}/status", self.port);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| format!("GET {url}: {e}"))
    }

    /// Starts the server on `self.port` and waits until `/healthz` answers 200.
    async fn start_server(&mut self) -> Result<(), String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_websocket"));
        command
            .env("PORT", self.port.to_string())
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("PROTECTION_BACKEND", "local")
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("ECS_AGENT_URI");
        let name = format!("server #{}", self.servers.len() + 1);
        self.servers.push(Proc::spawn(&name, command, false)?);
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        let start = Instant::now();
        loop {
            if let Some(status) = self.server().exited() {
                return Err(format!("{name} exited during start-up with {status}"));
            }
            let last = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if start.elapsed() > STEP {
                return Err(format!(
                    "{name}: GET {url} did not answer 200 within {STEP:?}: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = self.server().pid();
        self.mark(&format!("{name} (pid {pid}) healthy on port {}", self.port));
        Ok(())
    }

    /// Everything useful for understanding a failure.
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        text.push_str("--- milestones ---\n");
        for (at, what) in &self.milestones {
            text.push_str(&format!("  [{:>6.2}s] {what}\n", at.as_secs_f64()));
        }
        match &self.last_page {
            Some(page) => {
                text.push_str("--- the page's activity log (last read) ---\n");
                for line in &page.log {
                    text.push_str(&format!("  {line}\n"));
                }
                text.push_str(&format!(
                    "--- the page's badge ---\n  ws={:?} connection={:?} count={:?} protection={:?} expiry={:?} ({:?}) backend={:?} draining={:?} stale={}\n",
                    page.ws, page.connection, page.count, page.protection, page.expiry, page.expiry_iso,
                    page.backend, page.draining, page.stale
                ));
            }
            None => text.push_str("--- the page was never read ---\n"),
        }
        for server in &self.servers {
            text.push_str(&format!(
                "--- {} output (tail) ---\n{}",
                server.name,
                server.output.tail(40)
            ));
        }
        if let Some(driver) = &self.chromedriver {
            text.push_str(&format!(
                "--- chromedriver output (tail) ---\n{}",
                driver.output.tail(20)
            ));
        }
        text
    }
}

/// Whether `wanted` appear in `log` in this order (other lines may come between).
fn in_order(log: &[String], wanted: &[&str]) -> bool {
    let mut lines = log.iter();
    wanted.iter().all(|w| lines.any(|line| line == w))
}

/// Index of the `n`-th (0-based) line equal to `wanted`.
fn nth_index(log: &[String], wanted: &str, n: usize) -> Option<usize> {
    log.iter()
        .enumerate()
        .filter(|(_, l)| *l == wanted)
        .nth(n)
        .map(|(i, _)| i)
}

const WELCOME_ONE: &str = "Server says: \"Welcome! There are 1 connections\"";
const PING: &str = "Client sent: \"ping\"";
const PONG: &str = "Server says: \"pong\"";

fn badge_shows_one_protected_local(p: &Page) -> bool {
    p.ws == "open"
        && p.connection == "connected"
        && p.count == "1"
        && p.protection == "protected"
        && !p.expiry.is_empty()
        && p.expiry != "–"
        && p.expiry_iso.is_some()
        && p.backend == "local"
        && p.draining == "no"
        && !p.stale
}

async fn scenario(run: &mut Run, tools: &Tools) -> Result<(), String> {
    run.start_server().await?;

    // The driver, in its own process group so the browser it starts dies with it.
    let driver_port = free_port();
    let mut command = Command::new(&tools.chromedriver);
    command.arg(format!("--port={driver_port}"));
    run.chromedriver = Some(Proc::spawn("chromedriver", command, true)?);
    let driver = Driver::new(driver_port);
    driver.wait_ready(STEP).await?;
    run.mark("chromedriver ready");

    let profile = TempDir::new("browser-test-profile")?;
    let args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.0.display())])
    .collect();
    run._profile = Some(profile);
    run.session = Some(driver.new_session(&tools.chromium, &args).await?);
    run.mark("browser session started");

    let page_url = format!("http://127.0.0.1:{}/", run.port);
    run.session().goto(&page_url).await?;
    run.mark(&format!("opened {page_url}"));

    // Connected, welcomed as the only client.
    run.wait_page("\"Connected!\" and the welcome", |p| {
        p.ws == "open"
            && in_order(
                &p.log,
                &["Attempting to connect...", "Connected!", WELCOME_ONE],
            )
    })
    .await?;
    // The page pings every 2 s and the server answers.
    run.wait_page("a ping and its pong", |p| {
        in_order(&p.log, &["Connected!", WELCOME_ONE, PING, PONG])
    })
    .await?;
    run.wait_page(
        "the badge: 1 client, protected, an expiry, backend local",
        badge_shows_one_protected_local,
    )
    .await?;

    // The server agrees.
    let status = run.server_status().await?;
    if status["connections"] != 1
        || status["protection"]["state"] != "protected"
        || status["protection"]["backend"] != "local"
    {
        return Err(format!(
            "/status should say 1 connection, protected, backend local: {status}"
        ));
    }
    run.mark("/status: 1 connection, protected");

    let png = run.session().screenshot().await?;
    std::fs::write(SCREENSHOT, &png).map_err(|e| format!("cannot write {SCREENSHOT}: {e}"))?;
    run.mark(&format!(
        "screenshot ({} bytes) saved to {SCREENSHOT}",
        png.len()
    ));

    // Chat from the form, typed and clicked as a user would.
    let input = run.session().find("#chat-input").await?;
    run.session().send_keys(&input, CHAT).await?;
    let send = run.session().find("#chat-send").await?;
    run.session().click(&send).await?;
    let said = format!("You said: \"{CHAT}\"");
    run.wait_page("the chat line", |p| p.log.contains(&said))
        .await?;

    // Another player's chat cannot pass for the server's welcome and move the badge.
    let forged = "Welcome! There are 99999 connections";
    let other_url = format!("ws://127.0.0.1:{}/ws", run.port);
    let (mut other, _) = tokio_tungstenite::connect_async(&other_url)
        .await
        .map_err(|e| format!("second client: {e}"))?;
    futures_util::SinkExt::send(
        &mut other,
        tokio_tungstenite::tungstenite::Message::text(forged),
    )
    .await
    .map_err(|e| format!("second client send: {e}"))?;
    let shown = format!("Someone says: \"{forged}\"");
    run.wait_page("the other player's chat", |p| p.log.contains(&shown))
        .await?;
    if run.read_page().await?.count == "99999" {
        return Err("a chat line moved the connection count badge".into());
    }
    drop(other);

    // SIGTERM: the server closes the page's connection with 1001 and exits 0.
    let lines_before = run.read_page().await?.log.len();
    run.server().signal("TERM")?;
    run.mark("sent SIGTERM to the server");
    run.wait_page(
        "a close line with code 1001, and body[data-ws=closed]",
        |p| {
            p.ws == "closed"
                && p.log[lines_before.min(p.log.len())..]
                    .iter()
                    .any(|l| l.starts_with("Connection closed") && l.contains("code 1001"))
        },
    )
    .await?;
    let exit = run.server().wait_exit(STEP).await?;
    if exit.code() != Some(0) {
        return Err(format!(
            "the server should exit 0 on SIGTERM, it ended with {exit}"
        ));
    }
    run.mark("server exited with code 0");
    // From here on, a "Connected!" can only be to the new server.
    let page = run.read_page().await?;
    if page.ws != "closed" {
        return Err(format!(
            "with the server gone the page should not be open, body[data-ws]={:?}",
            page.ws
        ));
    }
    let lines_at_exit = page.log.len();
    // Let the page fail at least once against the closed port, so that the reconnect below goes
    // through its back-off rather than winning a race with the restart.
    run.wait_page("a failed reconnect attempt while the server is down", |p| {
        p.ws == "closed"
            && p.log[lines_at_exit.min(p.log.len())..]
                .iter()
                .any(|l| l.starts_with("Connection closed (code 1006"))
    })
    .await?;

    // Start again on the same port: the page comes back by itself.
    run.start_server().await?;
    run.wait_page("a second \"Connected!\" followed by a new welcome", |p| {
        let since_exit = &p.log[lines_at_exit.min(p.log.len())..];
        p.ws == "open"
            && nth_index(&p.log, "Connected!", 1).is_some()
            && in_order(since_exit, &["Connected!", WELCOME_ONE])
    })
    .await?;
    run.wait_page(
        "the badge after reconnecting: 1 client, protected, not stale",
        badge_shows_one_protected_local,
    )
    .await?;
    let status = run.server_status().await?;
    if status["connections"] != 1 || status["protection"]["state"] != "protected" {
        return Err(format!(
            "/status after the restart should say 1 connection, protected: {status}"
        ));
    }
    run.mark("/status after the restart: 1 connection, protected");
    Ok(())
}

/// The browser and its driver.
struct Tools {
    chromium: String,
    chromedriver: String,
}

/// The tools, or `None` (the test skips) when one is missing outside CI; panics in CI.
fn find_tools() -> Option<Tools> {
    let path = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let tools = Tools {
        chromium: path("CHROMIUM", "/usr/bin/chromium"),
        chromedriver: path("CHROMEDRIVER", "/usr/bin/chromedriver"),
    };
    let missing: Vec<&str> = [&tools.chromium, &tools.chromedriver]
        .into_iter()
        .filter(|p| !Path::new(p).is_file())
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Some(tools);
    }
    let message = format!(
        "the browser test needs {} (install the Debian packages: apt-get install -y chromium chromium-driver)",
        missing.join(" and ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and {message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_connects_shows_pongs_and_reconnects_after_a_server_restart() {
    let Some(tools) = find_tools() else { return };
    let mut run = Run {
        start: Instant::now(),
        port: free_port(),
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client"),
        milestones: Vec::new(),
        last_page: None,
        session: None,
        servers: Vec::new(),
        chromedriver: None,
        _profile: None,
    };
    let result = scenario(&mut run, &tools).await;
    let diagnostics = result.is_err().then(|| run.diagnostics());
    let final_log = run.last_page.take().map(|p| p.log).unwrap_or_default();
    if let Some(session) = run.session.take() {
        if let Err(e) = session.quit().await {
            eprintln!("could not end the browser session: {e}");
        }
    }
    let elapsed = run.start.elapsed();
    drop(run); // kills the driver's process group and any server still running
    match (result, diagnostics) {
        (Ok(()), _) => {
            println!("the page's activity log at the end:");
            for line in final_log {
                println!("  {line}");
            }
            println!("browser test passed in {:.2}s", elapsed.as_secs_f64());
        }
        (Err(e), diagnostics) => panic!("{e}\n{}", diagnostics.unwrap_or_default()),
    }
}
