//! `validate`: required fields, types, value rules and a JSON Schema, in that order; the
//! first failing check decides the reason.

use std::sync::Arc;

use keel::failure::reason;
use keel::{Context, Failure};

use super::DocStep;
use crate::config::TypeName;
use crate::doc::{Doc, FieldPath, Kind, PathValue};

/// One value rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The field.
    pub field: FieldPath,
    /// Reason on failure.
    pub reason: Arc<str>,
    /// Smallest number.
    pub min: Option<f64>,
    /// Largest number.
    pub max: Option<f64>,
    /// Shortest string (characters).
    pub min_length: Option<usize>,
    /// Longest string (characters).
    pub max_length: Option<usize>,
    /// Whole-string pattern.
    pub pattern: Option<regex::Regex>,
    /// Allowed values.
    pub one_of: Option<Vec<serde_json::Value>>,
    /// Message override.
    pub message: Option<String>,
}

/// The validate step.
#[derive(Clone)]
pub struct Validate {
    required: Arc<[FieldPath]>,
    types: Arc<[(FieldPath, TypeName)]>,
    rules: Arc<[Rule]>,
    schema: Option<Arc<jsonschema::Validator>>,
}

impl Validate {
    /// A validate step.
    pub fn new(
        required: Vec<FieldPath>,
        types: Vec<(FieldPath, TypeName)>,
        rules: Vec<Rule>,
        schema: Option<jsonschema::Validator>,
    ) -> Self {
        Validate { required: required.into(), types: types.into(), rules: rules.into(), schema: schema.map(Arc::new) }
    }
}

fn lookup<'a>(doc: &'a Doc, path: &FieldPath) -> Option<PathValue<'a>> {
    doc.get_path(path)
}

fn has_type(kind: Kind, t: TypeName) -> bool {
    match t {
        TypeName::Integer => kind == Kind::Integer,
        TypeName::Number => matches!(kind, Kind::Integer | Kind::Float),
        TypeName::String => kind == Kind::String,
        TypeName::Boolean => kind == Kind::Bool,
        TypeName::Object => kind == Kind::Object,
        TypeName::Array => kind == Kind::Array,
    }
}

impl Rule {
    fn check(&self, doc: &Doc) -> Result<(), Failure> {
        let Some(found) = lookup(doc, &self.field) else { return Ok(()) };
        let v = found.value();
        if doc.kind(v) == Kind::Null {
            return Ok(());
        }
        let fail = |what: String| {
            Err(Failure::permanent(self.reason.to_string(), self.message.clone().unwrap_or(what)).with_field(self.field.as_str()))
        };
        if self.min.is_some() || self.max.is_some() {
            let Some(n) = doc.as_f64(v) else {
                return fail(format!("`{}` is not a number", self.field));
            };
            if let Some(min) = self.min
                && n < min
            {
                return fail(format!("`{}` is {n}, below the minimum {min}", self.field));
            }
            if let Some(max) = self.max
                && n > max
            {
                return fail(format!("`{}` is {n}, above the maximum {max}", self.field));
            }
        }
        if self.min_length.is_some() || self.max_length.is_some() || self.pattern.is_some() {
            let Some(s) = doc.as_str(v) else {
                return fail(format!("`{}` is not a string", self.field));
            };
            let len = s.chars().count();
            if let Some(min) = self.min_length
                && len < min
            {
                return fail(format!("`{}` has {len} characters, fewer than {min}", self.field));
            }
            if let Some(max) = self.max_length
                && len > max
            {
                return fail(format!("`{}` has {len} characters, more than {max}", self.field));
            }
            if let Some(p) = &self.pattern
                && !p.is_match(&s)
            {
                return fail(format!("`{}` does not match /{}/", self.field, p.as_str()));
            }
        }
        if let Some(allowed) = &self.one_of {
            let got = doc.to_json_value(v);
            if !allowed.iter().any(|a| json_eq(a, &got)) {
                return fail(format!("`{}` is {got}, not one of the allowed values", self.field));
            }
        }
        Ok(())
    }
}

/// Equality where 1 and 1.0 are the same number.
fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl DocStep for Validate {
    fn apply(&mut self, doc: Doc, _cx: &mut Context<'_>, out: &mut Vec<Doc>) -> Result<(), Failure> {
        for f in self.required.iter() {
            let present = lookup(&doc, f).is_some_and(|v| doc.kind(v.value()) != Kind::Null);
            if !present {
                return Err(Failure::permanent(reason::MISSING_FIELD, format!("required field `{f}` is missing or null"))
                    .with_field(f.as_str()));
            }
        }
        for (f, t) in self.types.iter() {
            if let Some(v) = lookup(&doc, f) {
                let kind = doc.kind(v.value());
                if kind != Kind::Null && !has_type(kind, *t) {
                    return Err(Failure::permanent(
                        reason::BAD_TYPE,
                        format!("field `{f}` is a {}, expected a {}", kind.name(), t.name()),
                    )
                    .with_field(f.as_str()));
                }
            }
        }
        for r in self.rules.iter() {
            r.check(&doc)?;
        }
        if let Some(schema) = &self.schema {
            let value = doc.to_json();
            if let Some(err) = schema.iter_errors(&value).next() {
                let path = err.instance_path().as_str().to_owned();
                let mut f = Failure::permanent(reason::SCHEMA_VIOLATION, format!("{path}: {err}"));
                if !path.is_empty() {
                    f = f.with_field(path.trim_start_matches('/').replace('/', "."));
                }
                return Err(f);
            }
        }
        out.push(doc);
        Ok(())
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}
