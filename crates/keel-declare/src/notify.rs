//! `[[notify]]`: webhooks for run-level events (`keel::notify`), checked before any work.

use crate::config::NotifyConfig;
use crate::error::{Errors, KeyPath};

/// The event kinds a `[[notify]]` table may name.
pub const EVENTS: [&str; 6] = [
    "paused",
    "resumed",
    "failed",
    "aborted",
    "finished_with_dead_letters",
    "ingest_files_failed",
];

/// Checks every `[[notify]]` table.
pub(crate) fn check(errors: &mut Errors<'_>, tables: &[NotifyConfig]) {
    for (i, n) in tables.iter().enumerate() {
        let at = KeyPath::key("notify").i(i);
        if !cfg!(feature = "webhook") {
            errors.add(
                &at,
                "this keel was built without webhooks: build it with the `webhook` feature (the keel command has it)",
            );
        }
        if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
            errors.add(&at.k("url"), "an http:// or https:// URL");
        }
        if n.format.as_deref().is_some_and(|f| f != "json" && f != "slack") {
            errors.add(&at.k("format"), "`json` or `slack`");
        }
        for (j, e) in n.events.iter().enumerate() {
            if !EVENTS.contains(&e.as_str()) {
                errors.add(
                    &at.k("events").i(j),
                    format!("unknown event `{e}` ({})", EVENTS.join(", ")),
                );
            }
        }
    }
}

/// The webhooks of a pipeline file, started (each with its sending thread).
#[cfg(feature = "webhook")]
pub fn webhooks(
    loaded: &crate::build::Loaded,
) -> Result<Vec<keel_connectors::webhook::Webhook>, crate::error::ConfigErrors> {
    use crate::error::ConfigErrors;
    use keel_connectors::webhook::{Webhook, WebhookConfig, WebhookFormat};
    let mut errors = Errors::new(&loaded.path, &loaded.text);
    check(&mut errors, &loaded.config.notify);
    if !errors.list.is_empty() {
        return Err(ConfigErrors(errors.list));
    }
    let mut out = Vec::new();
    for (i, n) in loaded.config.notify.iter().enumerate() {
        let mut c = WebhookConfig::new(n.url.clone());
        if n.format.as_deref() == Some("slack") {
            c.format = WebhookFormat::Slack;
        }
        c.events = n.events.clone();
        if let Some(d) = n.min_interval {
            c.min_interval = d;
        }
        if let Some(d) = n.timeout {
            c.timeout = d;
        }
        c.headers = n.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let w = Webhook::start(c).map_err(|message| {
            ConfigErrors(vec![crate::ConfigError {
                file: loaded.path.clone(),
                line: None,
                key: Some(format!("notify[{i}]")),
                message,
            }])
        })?;
        out.push(w);
    }
    Ok(out)
}
