//! `select`, `drop` and `rename`: cheap reshaping of top-level fields.

use std::sync::Arc;

use keel::{Context, Failure};

use super::DocStep;
use crate::doc::Doc;

/// Keeps only the listed fields, in the listed order.
#[derive(Clone)]
pub struct Select(pub Arc<[String]>);

impl DocStep for Select {
    fn apply(&mut self, mut doc: Doc, _cx: &mut Context<'_>, out: &mut Vec<Doc>) -> Result<(), Failure> {
        doc.select(&self.0);
        out.push(doc);
        Ok(())
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

/// Removes the listed fields.
#[derive(Clone)]
pub struct DropFields(pub Arc<[String]>);

impl DocStep for DropFields {
    fn apply(&mut self, mut doc: Doc, _cx: &mut Context<'_>, out: &mut Vec<Doc>) -> Result<(), Failure> {
        for f in self.0.iter() {
            doc.remove(f);
        }
        out.push(doc);
        Ok(())
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

/// Renames fields (old name, new name).
#[derive(Clone)]
pub struct Rename(pub Arc<[(String, String)]>);

impl DocStep for Rename {
    fn apply(&mut self, mut doc: Doc, _cx: &mut Context<'_>, out: &mut Vec<Doc>) -> Result<(), Failure> {
        for (from, to) in self.0.iter() {
            doc.rename(from, to);
        }
        out.push(doc);
        Ok(())
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}
