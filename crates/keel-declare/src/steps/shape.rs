//! `select`, `drop` and `rename`: cheap reshaping of top-level fields.

use std::sync::Arc;

use keel::{Context, Failure};

use super::{DocStep, Next};
use crate::doc::Doc;

/// Keeps only the listed fields, in the listed order.
#[derive(Clone)]
pub struct Select {
    names: Arc<[String]>,
    hints: Vec<u32>,
}

impl Select {
    /// Keeps `names`.
    pub fn new(names: Vec<String>) -> Self {
        Select {
            hints: vec![0; names.len()],
            names: names.into(),
        }
    }
}

impl DocStep for Select {
    fn apply(&mut self, doc: &mut Doc, _cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        doc.select_hinted(&self.names, &mut self.hints);
        Ok(Next::Keep)
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

/// Removes the listed fields.
#[derive(Clone)]
pub struct DropFields(pub Arc<[String]>);

impl DocStep for DropFields {
    fn apply(&mut self, doc: &mut Doc, _cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        for f in self.0.iter() {
            doc.remove(f);
        }
        Ok(Next::Keep)
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

/// Renames fields (old name, new name).
#[derive(Clone)]
pub struct Rename(pub Arc<[(String, String)]>);

impl DocStep for Rename {
    fn apply(&mut self, doc: &mut Doc, _cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        for (from, to) in self.0.iter() {
            doc.rename(from, to);
        }
        Ok(Next::Keep)
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}
