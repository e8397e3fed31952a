//! The dead letters of a pipeline file, wherever its `[dead_letter]` puts them: a directory
//! of segment files, or a Kafka topic together with its fallback directory (the dead letters
//! the topic has not taken yet). `keel dlq` and replays read and mark them through this.
//!
//! A dead letter in a directory is at `FILE:LINE`; one on a topic at `TOPIC:PARTITION:OFFSET`
//! (a [`Location`] whose file is `TOPIC:PARTITION` and whose line is the offset). A topic
//! cannot be edited: the replays of its dead letters are recorded by identity in
//! `<path>/_replays.jsonl`, and purging acts on the directory only (the topic's retention
//! removes its messages).

use keel::dead_letter::Replay;
use keel_connectors::file::dead_letters::{DeadLetterDir, Entry, Filter, Location};

use crate::build::Loaded;
use crate::config::DeadLetterKind;
use crate::replay::{ReplayError, Selection};

/// The dead letters of a pipeline.
pub struct DeadLetters {
    dir: DeadLetterDir,
    topic: Option<crate::kafka::TopicStore>,
}

impl DeadLetters {
    /// The dead letters of a pipeline file.
    pub fn of(loaded: &Loaded) -> Result<Self, ReplayError> {
        let d = loaded.config.dead_letter.as_ref().ok_or(ReplayError::NoDeadLetters)?;
        if let Some(elsewhere) = not_readable(d) {
            return Err(ReplayError::NotReadable(elsewhere));
        }
        let dir = loaded.resolve(&d.path);
        let topic = match d.kind {
            DeadLetterKind::Kafka => Some(crate::kafka::TopicStore::new(d, dir.join("_replays.jsonl"))?),
            _ => None,
        };
        Ok(DeadLetters {
            dir: DeadLetterDir::new(dir),
            topic,
        })
    }

    /// The dead letters in a directory.
    pub fn in_dir(dir: DeadLetterDir) -> Self {
        DeadLetters { dir, topic: None }
    }

    /// The directory (with a topic, its fallback).
    pub fn dir(&self) -> &DeadLetterDir {
        &self.dir
    }

    /// Where they are, for messages: the directory, and the topic if any.
    pub fn describe(&self) -> String {
        match &self.topic {
            Some(t) => format!("topic {} and {}", t.name(), self.dir.path().display()),
            None => self.dir.path().display().to_string(),
        }
    }

    /// Every dead letter, unreadable ones included: the directory's, then the topic's.
    pub fn read(&self) -> Result<Vec<Entry>, ReplayError> {
        let mut out = self.dir.read()?;
        if let Some(t) = &self.topic {
            out.extend(t.read()?);
        }
        Ok(out)
    }

    /// The dead letters `filter` selects (unreadable ones are never selected).
    pub fn select(&self, filter: &Filter) -> Result<Selection, ReplayError> {
        Ok(filter.select(self.read()?))
    }

    /// One dead letter.
    pub fn get(&self, at: &Location) -> Result<Option<Entry>, ReplayError> {
        if let Some(t) = &self.topic
            && t.holds(at)
        {
            return Ok(t.read()?.into_iter().find(|e| &e.location == at));
        }
        Ok(self.dir.get(at)?)
    }

    /// Records `replay` in the dead letters of `selection`; returns how many were marked.
    pub fn mark_replayed(&self, selection: &Selection, replay: &Replay) -> Result<usize, ReplayError> {
        let (on_topic, in_dir): (Selection, Selection) = selection
            .iter()
            .cloned()
            .partition(|(loc, _)| self.topic.as_ref().is_some_and(|t| t.holds(loc)));
        let mut marked = self.dir.mark_replayed(&in_dir, replay)?;
        if let Some(t) = &self.topic {
            marked += t.mark_replayed(on_topic.iter().map(|(_, e)| e), replay)?;
        }
        Ok(marked)
    }

    /// Deletes the dead letters `filter` selects in the directory; returns how many, and how
    /// many selected ones are on the topic (which keel cannot delete).
    pub fn purge(&self, filter: &Filter) -> Result<(usize, usize), ReplayError> {
        let on_topic = match &self.topic {
            Some(t) => t
                .read()?
                .into_iter()
                .filter(|e| e.envelope.as_ref().is_ok_and(|env| filter.matches(env)))
                .count(),
            None => 0,
        };
        Ok((self.dir.purge(filter)?, on_topic))
    }
}

/// An entry for a topic message that is not a dead letter.
#[cfg(feature = "kafka")]
pub(crate) fn unreadable(message: String) -> Result<keel::dead_letter::Envelope, keel::dead_letter::EnvelopeError> {
    Err(keel::dead_letter::EnvelopeError::Json(message))
}

/// Where dead letters go that `keel dlq` does not read (a NATS subject, a Redis stream).
pub(crate) fn not_readable(d: &crate::config::DeadLetterConfig) -> Option<String> {
    let unset = String::new;
    match d.kind {
        DeadLetterKind::Nats => Some(format!("NATS subject {}", d.subject.clone().unwrap_or_else(unset))),
        DeadLetterKind::RedisStream => Some(format!("Redis stream {}", d.stream.clone().unwrap_or_else(unset))),
        DeadLetterKind::Postgres => Some(format!("PostgreSQL table {}", d.table.clone().unwrap_or_else(unset))),
        DeadLetterKind::Delta => Some(format!("Delta table {}", d.table.clone().unwrap_or_else(unset))),
        DeadLetterKind::S3 => Some(format!(
            "s3://{}/{} (dead-*.jsonl objects, the format of a dead-letter directory)",
            d.bucket.clone().unwrap_or_else(unset),
            d.prefix.clone().unwrap_or_else(unset)
        )),
        DeadLetterKind::Files | DeadLetterKind::Kafka => None,
    }
}
