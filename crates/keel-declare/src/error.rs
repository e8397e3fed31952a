//! Configuration errors that name the file, the line and the key.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The pipeline file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key path (`steps[2].rules[0].reason`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        f.write_str(": ")?;
        if let Some(k) = &self.key {
            write!(f, "{k}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in a pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A segment of a key path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A key path such as `steps[2].rules[0].reason`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The path of a top-level key.
    pub fn key(k: &str) -> Self {
        KeyPath(vec![Seg::Key(k.to_owned())])
    }

    /// This path extended by a key.
    pub fn k(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    /// The path of the table or list holding this key or element; `None` for the root.
    pub fn parent(&self) -> Option<KeyPath> {
        let (_, rest) = self.0.split_last()?;
        Some(KeyPath(rest.to_vec()))
    }

    /// Whether this path is `prefix` or lies under it.
    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// This path extended by an index.
    pub fn i(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// Finds line numbers of key paths in a TOML text.
pub struct Locator<'t> {
    root: Option<DeValue<'t>>,
    text: &'t str,
}

impl<'t> Locator<'t> {
    /// Parses `text` once for lookups.
    pub fn new(text: &'t str) -> Self {
        let root = DeTable::parse(text).ok().map(|t| DeValue::Table(t.into_inner()));
        Locator { root, text }
    }

    /// The 1-based line of the deepest existing node along `path`.
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let mut cur = self.root.as_ref()?;
        let mut span = None;
        for seg in &path.0 {
            let next = match seg {
                Seg::Key(k) => cur.get(k.as_str()),
                Seg::Index(i) => cur.get(*i),
            };
            let Some(next) = next else { break };
            span = Some(next.span());
            cur = next.get_ref();
        }
        let start = span?.start;
        Some(
            self.text[..start.min(self.text.len())]
                .bytes()
                .filter(|&b| b == b'\n')
                .count()
                + 1,
        )
    }
}

/// Collects errors with their lines.
pub struct Errors<'a> {
    file: &'a Path,
    locator: Locator<'a>,
    /// The errors so far.
    pub list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    /// A collector for `file` with text `text`.
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Errors {
            file,
            locator: Locator::new(text),
            list: Vec::new(),
        }
    }

    /// Records a problem at `path`.
    pub fn add(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line: self.locator.line_of(path),
            key: Some(path.to_string()),
            message: message.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_paths() {
        let text = "name = \"x\"\n\n[[steps]]\ntype = \"parse\"\n\n[[steps]]\ntype = \"validate\"\nrules = [\n  { field = \"a\", reason = \"r\" },\n]\n";
        let loc = Locator::new(text);
        assert_eq!(loc.line_of(&KeyPath::key("name")), Some(1));
        assert_eq!(loc.line_of(&KeyPath::key("steps").i(1).k("type")), Some(7));
        assert_eq!(
            loc.line_of(&KeyPath::key("steps").i(1).k("rules").i(0).k("reason")),
            Some(9)
        );
        // a missing key falls back to its nearest parent
        assert_eq!(loc.line_of(&KeyPath::key("steps").i(0).k("nope")), Some(3));
        assert_eq!(
            KeyPath::key("steps").i(1).k("rules").i(0).to_string(),
            "steps[1].rules[0]"
        );
    }
}
