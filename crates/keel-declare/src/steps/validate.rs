//! `validate`: required fields, types, value rules and a JSON Schema, in that order; the
//! first failing check decides the reason.

use std::sync::Arc;

use keel::failure::reason;
use keel::{Context, Failure};
use smallvec::SmallVec;

use super::{DocStep, Next};
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
///
/// Each distinct field is looked up once per record; the checks then run in their documented
/// order (required, types, rules, schema) over those lookups.
#[derive(Clone)]
pub struct Validate {
    /// Distinct fields used by the checks below.
    fields: Arc<[FieldPath]>,
    /// Indexes into `fields`.
    required: Arc<[usize]>,
    types: Arc<[(usize, TypeName)]>,
    rules: Arc<[(usize, Rule)]>,
    schema: Option<Arc<jsonschema::Validator>>,
    /// Field position hints, one per distinct field.
    hints: Vec<u32>,
}

impl Validate {
    /// A validate step.
    pub fn new(
        required: Vec<FieldPath>,
        types: Vec<(FieldPath, TypeName)>,
        rules: Vec<Rule>,
        schema: Option<jsonschema::Validator>,
    ) -> Self {
        let mut fields: Vec<FieldPath> = Vec::new();
        let mut index = |p: &FieldPath| match fields.iter().position(|f| f == p) {
            Some(i) => i,
            None => {
                fields.push(p.clone());
                fields.len() - 1
            }
        };
        let required: Vec<usize> = required.iter().map(&mut index).collect();
        let types: Vec<(usize, TypeName)> = types.iter().map(|(p, t)| (index(p), *t)).collect();
        let rules: Vec<(usize, Rule)> = rules.into_iter().map(|r| (index(&r.field), r)).collect();
        let hints = vec![0; fields.len()];
        Validate {
            fields: fields.into(),
            required: required.into(),
            types: types.into(),
            rules: rules.into(),
            schema: schema.map(Arc::new),
            hints,
        }
    }
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
    fn check(&self, doc: &Doc, found: Option<&PathValue<'_>>) -> Result<(), Failure> {
        let Some(found) = found else { return Ok(()) };
        let v = found.value();
        if doc.kind(v) == Kind::Null {
            return Ok(());
        }
        let fail = |what: String| {
            Err(
                Failure::permanent(self.reason.to_string(), self.message.clone().unwrap_or(what))
                    .with_field(self.field.as_str()),
            )
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
    fn apply(&mut self, doc: &mut Doc, _cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        let mut found: SmallVec<[Option<PathValue<'_>>; 8]> = SmallVec::with_capacity(self.fields.len());
        for (f, hint) in self.fields.iter().zip(self.hints.iter_mut()) {
            found.push(doc.get_path_hinted(f, hint));
        }
        for &i in self.required.iter() {
            if found[i].as_ref().is_none_or(|v| doc.kind(v.value()) == Kind::Null) {
                let f = &self.fields[i];
                return Err(Failure::permanent(
                    reason::MISSING_FIELD,
                    format!("required field `{f}` is missing or null"),
                )
                .with_field(f.as_str()));
            }
        }
        for &(i, t) in self.types.iter() {
            if let Some(v) = &found[i] {
                let kind = doc.kind(v.value());
                if kind != Kind::Null && !has_type(kind, t) {
                    let f = &self.fields[i];
                    return Err(Failure::permanent(
                        reason::BAD_TYPE,
                        format!("field `{f}` is a {}, expected a {}", kind.name(), t.name()),
                    )
                    .with_field(f.as_str()));
                }
            }
        }
        for (i, r) in self.rules.iter() {
            r.check(doc, found[*i].as_ref())?;
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
        Ok(Next::Keep)
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}
