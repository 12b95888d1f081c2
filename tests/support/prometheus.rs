//! Reading a Prometheus endpoint in the binaries' tests.

/// The Prometheus text served at `http://127.0.0.1:{port}/metrics`.
pub async fn prometheus_text(port: &str) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text")
}

/// The value of the sample `name` (no labels) in Prometheus `text`; panics if it is missing.
pub fn prometheus_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .parse()
        .expect("a number")
}
