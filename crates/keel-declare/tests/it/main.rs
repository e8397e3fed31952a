//! Integration tests of pipeline files (one test binary for the crate).

mod config;
mod corpus;
mod csv;
mod steps;

use std::path::{Path, PathBuf};

/// A pipeline file with input files in a temp dir.
pub struct Case {
    pub dir: tempfile::TempDir,
}

impl Case {
    /// `toml` is the pipeline file; `inputs` are (name, content) files in `in/`.
    pub fn new(toml: &str, inputs: &[(&str, &str)]) -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("in")).unwrap();
        for (name, content) in inputs {
            std::fs::write(dir.path().join("in").join(name), content).unwrap();
        }
        std::fs::write(dir.path().join("pipeline.toml"), toml).unwrap();
        Case { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("pipeline.toml")
    }

    pub fn write(&self, name: &str, content: &str) {
        std::fs::write(self.dir.path().join(name), content).unwrap();
    }

    /// Runs the pipeline to its end.
    pub fn run(&self) -> keel::RunSummary {
        let loaded = keel_declare::load(&self.path()).unwrap_or_else(|e| panic!("{e}"));
        keel_declare::build(&loaded, |_| {})
            .unwrap_or_else(|e| panic!("{e}"))
            .run()
            .unwrap()
    }

    /// The errors of loading and building the pipeline.
    pub fn errors(&self) -> String {
        match keel_declare::load(&self.path()) {
            Err(e) => e.to_string(),
            Ok(l) => match keel_declare::build(&l, |_| {}) {
                Err(e) => e.to_string(),
                Ok(_) => String::new(),
            },
        }
    }

    /// Visible lines of output directory `name`.
    pub fn lines(&self, name: &str) -> Vec<String> {
        lines(&self.dir.path().join(name))
    }

    /// Visible lines of output directory `name`, parsed.
    pub fn json(&self, name: &str) -> Vec<serde_json::Value> {
        self.lines(name)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn lines(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = match std::fs::read_dir(dir) {
        Ok(e) => e.map(|e| e.unwrap().path()).collect(),
        Err(_) => return Vec::new(),
    };
    names.sort();
    names
        .iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A pipeline file around `steps`, reading `in/*.jsonl` (or another format) and writing
/// `out/` and `dead/`.
pub fn pipeline(format: &str, steps: &str, extra_sinks: &str) -> String {
    format!(
        r#"name = "t"
[source]
type = "files"
path = "in"
format = "{format}"

{steps}

[[sinks]]
name = "out"
type = "files"
path = "out"
{extra_sinks}

[dead_letter]
path = "dead"
id_field = "id"

[checkpoint]
path = "state"
"#
    )
}
