//! The dead-letter directory: what `keel dlq` reads and repairs.
//!
//! Dead letters are written by a [`super::FileSink`] with the prefix `dead` (replays use
//! `dead-replay-<id>`): segment files committed once per epoch and rotated by size, one
//! envelope per line, each line with its own checksum ([`keel::dead_letter::Envelope`]).
//! Hidden files (`.`) are uncommitted and never read.
//!
//! Purging and marking replays rewrite a committed segment in place: a complete new copy is
//! written beside it and renamed over it ([`keel::durable::write_atomic`]), so a crash leaves
//! the old or the new segment, never a mix. A line that fails its checksum is kept as it is
//! and reported, never dropped.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use keel::dead_letter::{Envelope, EnvelopeError, Replay};
use keel::durable;

/// Where a dead letter is: its segment file and line (1-based).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Segment file name.
    pub file: String,
    /// Line number, from 1.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

impl std::str::FromStr for Location {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (file, line) = s.rsplit_once(':').ok_or_else(|| format!("`{s}` is not FILE:LINE"))?;
        let line = line.parse().map_err(|_| format!("`{s}`: the line is not a number"))?;
        Ok(Location {
            file: file.to_owned(),
            line,
        })
    }
}

/// One line of a segment.
#[derive(Debug)]
pub struct Entry {
    /// Where it is.
    pub location: Location,
    /// The envelope, or why the line cannot be read.
    pub envelope: Result<Envelope, EnvelopeError>,
}

/// Which dead letters an operation concerns.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this reason.
    pub reason: Option<String>,
    /// Only this stage.
    pub stage: Option<String>,
    /// Only this partition.
    pub partition: Option<String>,
    /// Last failure at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Last failure before this time.
    pub until_ms: Option<u64>,
    /// Only replayed (`Some(true)`) or never replayed (`Some(false)`) ones.
    pub replayed: Option<bool>,
}

impl Filter {
    /// The readable entries of `entries` this filter selects, with their locations.
    pub fn select(&self, entries: Vec<Entry>) -> Vec<(Location, Envelope)> {
        entries
            .into_iter()
            .filter_map(|e| match e.envelope {
                Ok(env) if self.matches(&env) => Some((e.location, env)),
                _ => None,
            })
            .collect()
    }

    /// True when `e` is selected.
    pub fn matches(&self, e: &Envelope) -> bool {
        self.reason.as_deref().is_none_or(|r| r == e.reason)
            && self.stage.as_deref().is_none_or(|s| s == e.stage)
            && self.partition.as_deref().is_none_or(|p| p == e.partition)
            && self.since_ms.is_none_or(|t| e.last_failed_ms >= t)
            && self.until_ms.is_none_or(|t| e.last_failed_ms < t)
            && self.replayed.is_none_or(|r| r != e.replays.is_empty())
    }
}

/// A dead-letter directory.
#[derive(Clone, Debug)]
pub struct DeadLetterDir {
    path: PathBuf,
}

impl DeadLetterDir {
    /// The directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeadLetterDir { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Committed segment files, in order: `dead*.jsonl` in the directory, and in the
    /// published per-file directories of batch ingestion (`<input file>/dead*.jsonl`, those
    /// holding a `_keel.json`).
    pub fn segments(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e),
        };
        let is_segment = |name: &str| name.starts_with("dead") && name.ends_with(".jsonl");
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_segment(&name) {
                names.push(name);
            } else if !name.starts_with(['.', '_']) && e.path().join("_keel.json").is_file() {
                for inner in fs::read_dir(e.path())? {
                    let inner = inner?.file_name().to_string_lossy().into_owned();
                    if is_segment(&inner) {
                        names.push(format!("{name}/{inner}"));
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn read_segment(&self, file: &str) -> io::Result<Vec<Entry>> {
        let bytes = fs::read(self.path.join(file))?;
        Ok(bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, l)| Entry {
                location: Location {
                    file: file.to_owned(),
                    line: i + 1,
                },
                envelope: Envelope::decode(l),
            })
            .collect())
    }

    /// Every dead letter, corrupt lines included, in order.
    pub fn read(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for s in self.segments()? {
            out.extend(self.read_segment(&s)?);
        }
        Ok(out)
    }

    /// The dead letters `filter` selects (corrupt lines are never selected).
    pub fn select(&self, filter: &Filter) -> io::Result<Vec<(Location, Envelope)>> {
        Ok(filter.select(self.read()?))
    }

    /// One dead letter.
    pub fn get(&self, at: &Location) -> io::Result<Option<Entry>> {
        if !self.segments()?.contains(&at.file) {
            return Ok(None);
        }
        Ok(self
            .read_segment(&at.file)?
            .into_iter()
            .find(|e| e.location.line == at.line))
    }

    /// Rewrites `file` atomically; `edit` gets every line (text) and returns the new lines.
    fn rewrite(&self, file: &str, edit: impl FnOnce(Vec<String>) -> Vec<String>) -> io::Result<()> {
        let path = self.path.join(file);
        let text = fs::read_to_string(&path)?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let new = edit(lines);
        if new.is_empty() {
            fs::remove_file(&path)?;
            return durable::LocalOps.sync_dir_of(&path);
        }
        let mut body = new.join("\n");
        body.push('\n');
        durable::write_atomic(&durable::LocalOps, &path, body.as_bytes())
    }

    /// Deletes the dead letters `filter` selects; returns how many.
    pub fn purge(&self, filter: &Filter) -> io::Result<usize> {
        let mut purged = 0;
        for file in self.segments()? {
            let entries = self.read_segment(&file)?;
            let drop: std::collections::BTreeSet<usize> = entries
                .iter()
                .filter(|e| e.envelope.as_ref().is_ok_and(|env| filter.matches(env)))
                .map(|e| e.location.line)
                .collect();
            if drop.is_empty() {
                continue;
            }
            purged += drop.len();
            self.rewrite(&file, |lines| {
                lines
                    .into_iter()
                    .enumerate()
                    .filter(|(i, l)| !l.is_empty() && !drop.contains(&(i + 1)))
                    .map(|(_, l)| l)
                    .collect()
            })?;
        }
        Ok(purged)
    }

    /// Records `replay` in the dead letters of `selection`; returns how many were marked.
    ///
    /// Envelopes are found by their [identity](Envelope::identity), not their line: a purge
    /// between the selection and the marking moves lines, and then the line number of a
    /// selected envelope names another one (or none). A selected envelope is looked for in
    /// its segment, at its line first, and is marked at most once; one that is gone (purged)
    /// is not marked, and one that already records this replay is left as is.
    pub fn mark_replayed(&self, selection: &[(Location, Envelope)], replay: &Replay) -> io::Result<usize> {
        use std::collections::{BTreeMap, HashMap};
        // per segment: identity -> preferred lines, one per selected envelope
        let mut by_file: BTreeMap<&str, HashMap<String, Vec<usize>>> = BTreeMap::new();
        for (loc, env) in selection {
            by_file
                .entry(&loc.file)
                .or_default()
                .entry(env.identity())
                .or_default()
                .push(loc.line);
        }
        let mut marked = 0;
        for (file, mut wanted) in by_file {
            if !self.path.join(file).exists() {
                continue;
            }
            self.rewrite(file, |lines| {
                let decoded: Vec<Option<(String, Envelope)>> = lines
                    .iter()
                    .map(|l| Envelope::decode(l.as_bytes()).ok().map(|e| (e.identity(), e)))
                    .collect();
                // which lines to mark: a selected line that still holds its envelope first,
                // then the first other lines with a wanted identity
                let mut mark = vec![false; lines.len()];
                for (id, preferred) in wanted.iter_mut() {
                    preferred.retain(|&line| {
                        let hit = line >= 1
                            && decoded
                                .get(line - 1)
                                .is_some_and(|d| d.as_ref().is_some_and(|(i, _)| i == id))
                            && !mark[line - 1];
                        if hit {
                            mark[line - 1] = true;
                        }
                        !hit
                    });
                }
                for (i, d) in decoded.iter().enumerate() {
                    if let Some((id, _)) = d
                        && !mark[i]
                        && let Some(left) = wanted.get_mut(id)
                        && left.pop().is_some()
                    {
                        mark[i] = true;
                    }
                }
                lines
                    .into_iter()
                    .zip(decoded)
                    .zip(mark)
                    .map(|((l, d), m)| match d {
                        Some((_, mut env)) if m && !env.replays.iter().any(|r| r.id == replay.id) => {
                            env.replays.push(replay.clone());
                            marked += 1;
                            let mut buf = Vec::new();
                            env.encode(&mut buf);
                            String::from_utf8(buf).unwrap_or(l)
                        }
                        _ => l,
                    })
                    .collect()
            })?;
        }
        Ok(marked)
    }
}

trait SyncDirOf {
    fn sync_dir_of(&self, path: &Path) -> io::Result<()>;
}

impl SyncDirOf for durable::LocalOps {
    fn sync_dir_of(&self, path: &Path) -> io::Result<()> {
        use durable::FileOps;
        match path.parent() {
            Some(d) => self.sync_dir(d),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use keel::Record;
    use keel::dead_letter::Provenance;
    use keel::failure::Failure;

    use super::*;

    fn envelope(reason: &str, partition: &str, at: u64) -> Vec<u8> {
        let f = Failure::permanent(reason.to_owned(), "m").with_stage("validate");
        let pos = serde_json::json!(1);
        let e = Envelope::new(
            &Record::from_value(format!("raw-{reason}-{at}").into_bytes()),
            &f,
            Provenance {
                pipeline: "p",
                partition,
                position: &pos,
                epoch: 1,
                attempts: 1,
                first_failed_ms: at,
                last_failed_ms: at,
            },
        );
        let mut b = Vec::new();
        e.encode(&mut b);
        b.push(b'\n');
        b
    }

    #[test]
    fn read_filter_purge_and_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg1 = envelope("malformed", "a", 10);
        seg1.extend(envelope("missing_field", "a", 20));
        seg1.extend(b"{\"v\":1,\"reason\":\"tampered\",\"crc32c\":\"00000000\"}\n");
        let seg2 = envelope("malformed", "b", 30);
        fs::write(dir.path().join("dead-000000000001-000.jsonl"), seg1).unwrap();
        fs::write(dir.path().join("dead-000000000002-000.jsonl"), seg2).unwrap();
        fs::write(
            dir.path().join(".dead-000000000003-000.jsonl.pending"),
            envelope("x", "c", 40),
        )
        .unwrap();
        let d = DeadLetterDir::new(dir.path());
        let all = d.read().unwrap();
        assert_eq!(all.len(), 4, "pending segments are not read");
        assert_eq!(all.iter().filter(|e| e.envelope.is_err()).count(), 1);
        let malformed = Filter {
            reason: Some("malformed".into()),
            ..Default::default()
        };
        let sel = d.select(&malformed).unwrap();
        assert_eq!(sel.len(), 2);
        assert_eq!(sel[1].0.to_string(), "dead-000000000002-000.jsonl:1");
        let since = Filter {
            since_ms: Some(20),
            until_ms: Some(30),
            ..Default::default()
        };
        assert_eq!(d.select(&since).unwrap().len(), 1);

        let replay = Replay {
            at_ms: 99,
            id: "r1".into(),
            to: "pipeline".into(),
        };
        let locs: Vec<Location> = sel.iter().map(|(l, _)| l.clone()).collect();
        assert_eq!(d.mark_replayed(&sel, &replay).unwrap(), 2);
        assert_eq!(d.mark_replayed(&sel, &replay).unwrap(), 0, "marking twice is a no-op");
        let unreplayed = Filter {
            replayed: Some(false),
            ..Default::default()
        };
        assert_eq!(d.select(&unreplayed).unwrap().len(), 1);
        assert_eq!(
            d.get(&locs[0]).unwrap().unwrap().envelope.unwrap().replays,
            vec![replay]
        );

        assert_eq!(d.purge(&malformed).unwrap(), 2);
        assert!(
            !dir.path().join("dead-000000000002-000.jsonl").exists(),
            "an emptied segment is removed"
        );
        let left = d.read().unwrap();
        assert_eq!(left.len(), 2, "the corrupt line is kept");
    }

    /// A purge between selecting and marking moves lines: the selected envelopes are still
    /// the ones marked, each once, and purged ones are not marked.
    #[test]
    fn marking_after_a_purge_finds_envelopes_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Vec::new();
        for (reason, at) in [
            ("malformed", 1),
            ("late", 2),
            ("malformed", 3),
            ("late", 4),
            ("late", 5),
        ] {
            seg.extend(envelope(reason, "a", at));
        }
        fs::write(dir.path().join("dead-000000000001-000.jsonl"), seg).unwrap();
        let d = DeadLetterDir::new(dir.path());
        let late = Filter {
            reason: Some("late".into()),
            ..Default::default()
        };
        let sel = d.select(&late).unwrap();
        assert_eq!(sel.len(), 3);
        // purge the malformed ones and one selected envelope
        let purge = Filter {
            reason: Some("malformed".into()),
            ..Default::default()
        };
        assert_eq!(d.purge(&purge).unwrap(), 2);
        let gone = Filter {
            since_ms: Some(4),
            until_ms: Some(5),
            ..Default::default()
        };
        assert_eq!(d.purge(&gone).unwrap(), 1);
        let replay = Replay {
            at_ms: 9,
            id: "r".into(),
            to: "pipeline".into(),
        };
        assert_eq!(d.mark_replayed(&sel, &replay).unwrap(), 2);
        let left: Vec<(String, u64, usize)> = d
            .read()
            .unwrap()
            .into_iter()
            .map(|e| e.envelope.unwrap())
            .map(|e| (e.reason, e.last_failed_ms, e.replays.len()))
            .collect();
        assert_eq!(left, vec![("late".into(), 2, 1), ("late".into(), 5, 1)]);
        assert_eq!(d.mark_replayed(&sel, &replay).unwrap(), 0, "marked once");
    }

    #[test]
    fn locations_parse() {
        let l: Location = "dead-1.jsonl:7".parse().unwrap();
        assert_eq!((l.file.as_str(), l.line), ("dead-1.jsonl", 7));
        assert!("nope".parse::<Location>().is_err());
    }
}
