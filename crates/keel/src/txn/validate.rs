//! Validators: checks over a transaction's staged files, run before its commit.

use bytes::Bytes;

/// A staged file as validators see it.
#[derive(Clone, Debug)]
pub struct StagedContent {
    /// Its name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Its content, loaded when a validator [needs it](Validator::needs_content).
    pub data: Option<Bytes>,
}

/// A check of staged files. A failing check returns the reason, which names the file and,
/// where it can, the line.
pub trait Validator: Send + Sync {
    /// The validator's name, for errors (`min_records(10)`).
    fn name(&self) -> String;

    /// True when [`check`](Validator::check) reads file contents.
    fn needs_content(&self) -> bool {
        false
    }

    /// Checks the staged files.
    fn check(&self, files: &[StagedContent]) -> Result<(), String>;
}

/// At least one non-empty file.
#[derive(Clone, Copy, Debug, Default)]
pub struct NonEmpty;

impl Validator for NonEmpty {
    fn name(&self) -> String {
        "non_empty".into()
    }

    fn check(&self, files: &[StagedContent]) -> Result<(), String> {
        if files.iter().any(|f| f.size > 0) {
            Ok(())
        } else {
            Err(format!("no data staged ({} empty files)", files.len()))
        }
    }
}

/// At least this many lines (records) over all files.
#[derive(Clone, Copy, Debug)]
pub struct MinRecords(pub u64);

impl Validator for MinRecords {
    fn name(&self) -> String {
        format!("min_records({})", self.0)
    }

    fn needs_content(&self) -> bool {
        true
    }

    fn check(&self, files: &[StagedContent]) -> Result<(), String> {
        let n: u64 = files.iter().map(|f| f.data.as_deref().map_or(0, count_lines)).sum();
        if n >= self.0 {
            Ok(())
        } else {
            Err(format!("{n} records staged, fewer than {}", self.0))
        }
    }
}

fn count_lines(data: &[u8]) -> u64 {
    let n = memchr::memchr_iter(b'\n', data).count() as u64;
    n + u64::from(!data.is_empty() && !data.ends_with(b"\n"))
}

/// Every non-empty line of every file is a JSON value.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

impl Validator for JsonLines {
    fn name(&self) -> String {
        "json_lines".into()
    }

    fn needs_content(&self) -> bool {
        true
    }

    fn check(&self, files: &[StagedContent]) -> Result<(), String> {
        for f in files {
            let Some(data) = &f.data else { continue };
            for (i, line) in data.split(|&b| b == b'\n').enumerate() {
                if line.is_empty() {
                    continue;
                }
                if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                    return Err(format!("{}:{}: not JSON: {e}", f.name, i + 1));
                }
            }
        }
        Ok(())
    }
}

/// A validator from a name and a function.
pub fn validator_fn<F>(name: &str, needs_content: bool, f: F) -> impl Validator
where
    F: Fn(&[StagedContent]) -> Result<(), String> + Send + Sync,
{
    struct FnValidator<F> {
        name: String,
        needs_content: bool,
        f: F,
    }
    impl<F> Validator for FnValidator<F>
    where
        F: Fn(&[StagedContent]) -> Result<(), String> + Send + Sync,
    {
        fn name(&self) -> String {
            self.name.clone()
        }
        fn needs_content(&self) -> bool {
            self.needs_content
        }
        fn check(&self, files: &[StagedContent]) -> Result<(), String> {
            (self.f)(files)
        }
    }
    FnValidator {
        name: name.to_owned(),
        needs_content,
        f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, data: &str) -> StagedContent {
        StagedContent {
            name: name.into(),
            size: data.len() as u64,
            data: Some(Bytes::copy_from_slice(data.as_bytes())),
        }
    }

    #[test]
    fn builtins() {
        let good = [file("a", "{\"x\":1}\n{\"x\":2}\n"), file("b", "3")];
        assert!(NonEmpty.check(&good).is_ok());
        assert!(NonEmpty.check(&[file("a", "")]).is_err());
        assert!(MinRecords(3).check(&good).is_ok());
        assert_eq!(
            MinRecords(4).check(&good).unwrap_err(),
            "3 records staged, fewer than 4"
        );
        assert!(JsonLines.check(&good).is_ok());
        let bad = [file("a", "{}\n{oops\n")];
        let e = JsonLines.check(&bad).unwrap_err();
        assert!(e.starts_with("a:2: not JSON"), "{e}");
        let v = validator_fn("two_files", false, |f| {
            if f.len() == 2 { Ok(()) } else { Err("want 2".into()) }
        });
        assert!(v.check(&good).is_ok() && v.check(&bad).is_err());
        assert_eq!(v.name(), "two_files");
    }
}
