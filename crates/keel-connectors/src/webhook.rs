//! Run events ([`keel::notify::RunEvent`]) posted to a webhook: JSON, or a Slack-compatible
//! `{"text": ...}` body.
//!
//! The listener only filters, rate-limits and queues (a bounded channel: when it is full
//! the event is dropped with a warning); a thread of its own posts. A failed post is tried
//! once more after a second, then logged and dropped: a notification never blocks or fails
//! the run. Per event kind, at most one post per `min_interval`; the events held back in
//! between are counted in the next post's `suppressed`. [`Webhook::flush`] waits (up to a
//! bound) for what is queued, so that the last event of a run is sent before the process
//! exits.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel::notify::{RunEvent, RunListener};

/// The body of a post.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The event as JSON: `event`, `pipeline`, its fields, `at` (RFC 3339), `text` and
    /// `suppressed`.
    #[default]
    Json,
    /// `{"text": "..."}`, as Slack's incoming webhooks (and Mattermost, Rocket.Chat) take.
    Slack,
}

/// Where and what to post.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The URL (http or https).
    pub url: String,
    /// The body.
    pub format: WebhookFormat,
    /// Only these event kinds ([`RunEvent::kind`]); empty: all.
    pub events: Vec<String>,
    /// At most one post per event kind in this time.
    pub min_interval: Duration,
    /// How long a post may take.
    pub timeout: Duration,
    /// Headers added to each post (an `Authorization`, say).
    pub headers: Vec<(String, String)>,
}

impl WebhookConfig {
    /// Posts JSON to `url`, every event kind, at most one a minute per kind, 5 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            format: WebhookFormat::Json,
            events: Vec::new(),
            min_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            headers: Vec::new(),
        }
    }
}

enum Msg {
    Post(serde_json::Value),
    Flush(SyncSender<()>),
}

/// A webhook listener; clones share the queue and the sending thread.
#[derive(Clone)]
pub struct Webhook {
    config: Arc<WebhookConfig>,
    tx: SyncSender<Msg>,
    /// Per event kind: when it was last queued, and how many were held back since.
    recent: Arc<Mutex<HashMap<&'static str, (Instant, u64)>>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &keel::util::redact_url(&self.config.url))
            .finish()
    }
}

impl Webhook {
    /// Starts the sending thread.
    pub fn start(config: WebhookConfig) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        let (tx, rx) = sync_channel(64);
        let config = Arc::new(config);
        let c = config.clone();
        std::thread::Builder::new()
            .name("keel-webhook".into())
            .spawn(move || send_loop(&c, &client, rx))
            .map_err(|e| format!("webhook thread: {e}"))?;
        Ok(Webhook {
            config,
            tx,
            recent: Arc::default(),
        })
    }

    /// Waits until everything queued so far was posted (or dropped), at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let (done, wait) = sync_channel(1);
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }

    fn body(&self, event: &RunEvent, suppressed: u64) -> serde_json::Value {
        let mut text = event.text();
        if suppressed > 0 {
            text.push_str(&format!(" ({suppressed} more held back by the rate limit)"));
        }
        match self.config.format {
            WebhookFormat::Slack => serde_json::json!({ "text": text }),
            WebhookFormat::Json => {
                let mut v = serde_json::to_value(event).unwrap_or_default();
                v["at"] = keel::util::format_rfc3339_ms(keel::util::now_ms()).into();
                v["text"] = text.into();
                v["suppressed"] = suppressed.into();
                v
            }
        }
    }
}

impl RunListener for Webhook {
    fn on_event(&self, event: &RunEvent) {
        let kind = event.kind();
        if !self.config.events.is_empty() && !self.config.events.iter().any(|e| e == kind) {
            return;
        }
        let suppressed = {
            let Ok(mut recent) = self.recent.lock() else {
                return;
            };
            let now = Instant::now();
            match recent.get_mut(kind) {
                Some((last, held)) if now.duration_since(*last) < self.config.min_interval => {
                    *held += 1;
                    return;
                }
                Some((last, held)) => {
                    *last = now;
                    std::mem::take(held)
                }
                None => {
                    recent.insert(kind, (now, 0));
                    0
                }
            }
        };
        match self.tx.try_send(Msg::Post(self.body(event, suppressed))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => tracing::warn!(event = kind, "webhook queue full: event dropped"),
            Err(TrySendError::Disconnected(_)) => tracing::warn!(event = kind, "webhook thread gone: event dropped"),
        }
    }
}

fn send_loop(config: &WebhookConfig, client: &reqwest::Client, rx: Receiver<Msg>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the webhook thread cannot start; notifications are off");
            return;
        }
    };
    let url = keel::util::redact_url(&config.url);
    while let Ok(msg) = rx.recv() {
        let body = match msg {
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Msg::Post(body) => body,
        };
        for attempt in 1..=2 {
            let sent = rt.block_on(async {
                let mut req = client
                    .post(&config.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string());
                for (k, v) in &config.headers {
                    req = req.header(k, v);
                }
                req.send().await
            });
            match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => tracing::warn!(%url, status = %r.status(), attempt, "webhook refused a notification"),
                Err(e) => tracing::warn!(%url, error = %e, attempt, "posting a notification failed"),
            }
            if attempt == 1 {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A local receiver: the bodies of the POSTs it got.
    fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                g.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        (url, got)
    }

    fn paused() -> RunEvent {
        RunEvent::Paused {
            pipeline: "p".into(),
            cause: "circuit breaker open".into(),
        }
    }

    #[test]
    fn one_post_per_kind_and_interval_the_rest_counted_as_suppressed() {
        let (url, got) = receiver();
        let mut c = WebhookConfig::new(url);
        c.min_interval = Duration::from_millis(300);
        c.events = vec!["paused".into(), "aborted".into()];
        let w = Webhook::start(c).unwrap();
        for _ in 0..5 {
            w.on_event(&paused());
        }
        w.on_event(&RunEvent::Resumed { pipeline: "p".into() });
        w.on_event(&RunEvent::Aborted {
            pipeline: "p".into(),
            reason: "r".into(),
        });
        std::thread::sleep(Duration::from_millis(350));
        w.on_event(&paused());
        w.flush(Duration::from_secs(10));
        let got = got.lock().unwrap().clone();
        let kinds: Vec<&str> = got.iter().map(|v| v["event"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["paused", "aborted", "paused"],
            "resumed is filtered out: {got:?}"
        );
        assert_eq!(got[0]["suppressed"], 0);
        assert_eq!(got[2]["suppressed"], 4, "the four held back");
        assert!(got[2]["text"].as_str().unwrap().contains("4 more held back"));
    }
}
