//! Steps declared in a pipeline file, all working on [`Doc`]s, composed into one [`DocChain`]
//! that the runtime treats like any other step.

mod aggregate;
mod dedupe;
mod event_time;
mod jq;
mod parse;
mod shape;
mod validate;

use std::sync::Arc;

use bytes::Bytes;
use keel::{Context, Failure, Record, Step};

pub use aggregate::{Aggregate, AggregateSpec, AggregateState, FinalOutput, Func, Num};
pub use dedupe::Dedupe;
pub use event_time::{EventTimeStep, format_ms, parse_rfc3339};
pub use jq::{JqFilter, JqProgram, JqTransform};
pub use parse::{EmptyFields, ParseCsv, ParseJson};
pub use shape::{DropFields, Rename, Select};
pub use validate::{Rule, Validate};

use crate::doc::Doc;

/// What a step decided about a doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Pass the (possibly changed) doc on.
    Keep,
    /// Drop it (filtered out, or consumed).
    Drop,
}

/// One declared step. Steps change docs in place: most records pass every step without
/// being moved or copied.
pub trait DocStep {
    /// Handles one doc. A step with several outputs per input (jq) makes `doc` the first and
    /// pushes the others into `more`; they continue after it, in order.
    fn apply(&mut self, doc: &mut Doc, cx: &mut Context<'_>, more: &mut Vec<Doc>) -> Result<Next, Failure>;

    /// Called once at the end of a bounded input.
    fn finish(&mut self, cx: &mut Context<'_>, out: &mut Vec<Doc>) -> Result<(), Failure> {
        let _ = (cx, out);
        Ok(())
    }

    /// A copy for another partition.
    fn clone_box(&self) -> Box<dyn DocStep>;
}

/// The steps of a pipeline file, as one [`Step`] from records to docs.
pub struct DocChain {
    steps: Vec<(Arc<str>, Box<dyn DocStep>)>,
    id_field: Option<Arc<str>>,
    more: Vec<Doc>,
}

impl Clone for DocChain {
    fn clone(&self) -> Self {
        DocChain {
            steps: self.steps.iter().map(|(n, s)| (n.clone(), s.clone_box())).collect(),
            id_field: self.id_field.clone(),
            more: Vec::new(),
        }
    }
}

impl DocChain {
    /// A chain of named steps. `id_field` names the field copied into dead letters as `id`.
    pub fn new(steps: Vec<(Arc<str>, Box<dyn DocStep>)>, id_field: Option<Arc<str>>) -> Self {
        DocChain {
            steps,
            id_field,
            more: Vec::new(),
        }
    }

    /// Runs `doc` through the steps from `from` on, pushing what comes out into `out`.
    fn run(&mut self, mut doc: Doc, from: usize, cx: &mut Context<'_>, out: &mut Vec<Doc>) -> Result<(), Failure> {
        for i in from..self.steps.len() {
            let (name, step) = &mut self.steps[i];
            match step.apply(&mut doc, cx, &mut self.more) {
                Ok(Next::Keep) => {}
                Ok(Next::Drop) => return Ok(()),
                Err(mut f) => {
                    f.stage_if_empty(name);
                    return Err(f);
                }
            }
            if !self.more.is_empty() {
                let extra = std::mem::take(&mut self.more);
                self.run(doc, i + 1, cx, out)?;
                for d in extra {
                    self.run(d, i + 1, cx, out)?;
                }
                return Ok(());
            }
        }
        out.push(doc);
        Ok(())
    }

    fn with_record_id(&self, mut f: Failure, cx: &Context<'_>) -> Failure {
        if let (None, Some(field), Some(rec)) = (&f.record_id, &self.id_field, cx.record()) {
            f.record_id = record_id(&rec.value, field);
        }
        f
    }
}

impl Step<Record> for DocChain {
    type Out = Doc;

    async fn process(&mut self, item: Record, cx: &mut Context<'_>, out: &mut Vec<Doc>) -> Result<(), Failure> {
        self.run(Doc::raw(item.value), 0, cx, out)
            .map_err(|f| self.with_record_id(f, cx))
    }

    async fn finish(&mut self, cx: &mut Context<'_>, out: &mut Vec<Doc>) -> Result<(), Failure> {
        for i in 0..self.steps.len() {
            let mut finals = Vec::new();
            let (name, step) = &mut self.steps[i];
            step.finish(cx, &mut finals).map_err(|mut f| {
                f.stage_if_empty(name);
                f
            })?;
            for d in finals {
                self.run(d, i + 1, cx, out)?;
            }
        }
        Ok(())
    }
}

trait StageIfEmpty {
    fn stage_if_empty(&mut self, name: &str);
}

impl StageIfEmpty for Failure {
    fn stage_if_empty(&mut self, name: &str) {
        if self.stage.is_empty() {
            self.stage = name.to_owned();
        }
    }
}

/// The correlation id of a failed record: the top-level `field` of the JSON object, or, for
/// text that is not valid JSON, the first `"field": <number or string>` in it.
pub fn record_id(raw: &Bytes, field: &str) -> Option<serde_json::Value> {
    if let Ok(doc) = Doc::parse_json(raw.clone()) {
        return doc.get(field).map(|v| doc.to_json_value(v));
    }
    let needle = format!("\"{field}\"");
    let text = std::str::from_utf8(raw).ok()?;
    let mut from = 0;
    while let Some(i) = text[from..].find(&needle) {
        let rest = text[from + i + needle.len()..].trim_start();
        from += i + needle.len();
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let rest = rest.trim_start();
        let end = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.find('"').map(|e| e + 2)
        } else {
            Some(
                rest.find(|c: char| !(c.is_ascii_digit() || c == '-'))
                    .unwrap_or(rest.len()),
            )
        };
        if let Some(v) = end.and_then(|e| serde_json::from_str(&rest[..e]).ok()) {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_from_json_and_from_broken_text() {
        let id = |s: &str| record_id(&Bytes::copy_from_slice(s.as_bytes()), "id");
        assert_eq!(id(r#"{"x": {"id": 1}, "id": 7}"#), Some(serde_json::json!(7)));
        assert_eq!(id(r#"{"id": 12, "ts": 5, "cust"#), Some(serde_json::json!(12)));
        assert_eq!(id(r#"{id: 3, "id" : "a-b"}"#), Some(serde_json::json!("a-b")));
        assert_eq!(id(r#"{"name": "x"}"#), None);
        assert_eq!(id("garbage"), None);
    }
}
