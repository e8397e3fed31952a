//! `aggregate`: running aggregates per key, kept in keyed state.
//!
//! Each record updates the aggregates of its key (`count()`, `sum(f)`, `min(f)`, `max(f)`)
//! and, with `emit`, gets their new values as fields. A missing or null input field leaves
//! an aggregate unchanged; a non-numeric one fails the record (`bad_type`) before any state
//! changes. Integer sums stay integers until they would overflow, then become floats. At the
//! end of a bounded input, `final` writes one record per key to a sink, in key order.

use std::sync::Arc;

use keel::failure::reason;
use keel::{Context, Failure, StateSpec};
use serde::{Deserialize, Serialize};

use super::{DocStep, Next};
use crate::doc::{Doc, FieldPath, Value};
use crate::encode::DocEncoder;
use keel::Encoder;

/// An aggregate function.
#[derive(Clone, Debug, PartialEq)]
pub enum Func {
    /// Number of records.
    Count,
    /// Sum of a field.
    Sum(FieldPath),
    /// Smallest value of a field.
    Min(FieldPath),
    /// Largest value of a field.
    Max(FieldPath),
}

impl Func {
    /// Parses `count()`, `sum(field)`, `min(field)`, `max(field)`.
    pub fn parse(text: &str) -> Result<Func, String> {
        let t = text.trim();
        let (name, rest) = t
            .split_once('(')
            .ok_or_else(|| format!("`{text}`: expected count(), sum(f), min(f) or max(f)"))?;
        let arg = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("`{text}`: missing `)`"))?
            .trim();
        let field = || FieldPath::parse(arg).ok_or_else(|| format!("`{text}`: `{arg}` is not a field name"));
        match name.trim() {
            "count" if arg.is_empty() => Ok(Func::Count),
            "count" => Err(format!("`{text}`: count() takes no field")),
            "sum" => Ok(Func::Sum(field()?)),
            "min" => Ok(Func::Min(field()?)),
            "max" => Ok(Func::Max(field()?)),
            other => Err(format!("`{text}`: unknown function `{other}` (count, sum, min, max)")),
        }
    }

    fn input(&self) -> Option<&FieldPath> {
        match self {
            Func::Count => None,
            Func::Sum(f) | Func::Min(f) | Func::Max(f) => Some(f),
        }
    }
}

/// An output field and its function.
#[derive(Clone, Debug)]
pub struct AggregateSpec {
    /// Output field name.
    pub name: Arc<str>,
    /// The function.
    pub func: Func,
}

/// A number in aggregate state.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Num {
    /// No value yet (min/max before the first input).
    Empty,
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
}

impl Num {
    fn value(self) -> Value {
        match self {
            Num::Empty => Value::Null,
            Num::Int(i) => Value::Int(i),
            Num::Float(f) => Value::Float(f),
        }
    }

    fn as_f64(self) -> Option<f64> {
        match self {
            Num::Empty => None,
            Num::Int(i) => Some(i as f64),
            Num::Float(f) => Some(f),
        }
    }

    fn add(self, x: Num) -> Num {
        match (self, x) {
            (Num::Empty, x) | (x, Num::Empty) => x,
            (Num::Int(a), Num::Int(b)) => a.checked_add(b).map_or(Num::Float(a as f64 + b as f64), Num::Int),
            (a, b) => Num::Float(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
        }
    }

    fn less(self, other: Num) -> bool {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a < b,
            (a, b) => a.as_f64().zip(b.as_f64()).is_some_and(|(a, b)| a < b),
        }
    }
}

/// The state of one key: one number per aggregate, in declaration order. A single
/// aggregate is stored inline, which keeps the state table small and cache-friendly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AggregateState {
    /// One aggregate.
    One(Num),
    /// Several aggregates.
    Many(Vec<Num>),
}

impl AggregateState {
    fn new(n: usize) -> Self {
        if n == 1 {
            AggregateState::One(Num::Empty)
        } else {
            AggregateState::Many(vec![Num::Empty; n])
        }
    }

    /// The values, in declaration order.
    pub fn values(&self) -> &[Num] {
        match self {
            AggregateState::One(n) => std::slice::from_ref(n),
            AggregateState::Many(v) => v,
        }
    }

    /// The values for `n` aggregates, adapting state written by a different definition.
    fn values_mut(&mut self, n: usize) -> &mut [Num] {
        if self.values().len() != n {
            let mut v = self.values().to_vec();
            v.resize(n, Num::Empty);
            *self = if n == 1 {
                AggregateState::One(v[0])
            } else {
                AggregateState::Many(v)
            };
        }
        match self {
            AggregateState::One(x) => std::slice::from_mut(x),
            AggregateState::Many(v) => v,
        }
    }
}

/// Where final results go.
#[derive(Clone, Debug)]
pub struct FinalOutput {
    /// The sink name.
    pub sink: String,
    /// Output fields: `None` is the key, `Some(i)` the i-th aggregate.
    pub fields: Vec<(String, Option<usize>)>,
    /// How that sink wants records encoded.
    pub encoder: DocEncoder,
}

/// The aggregate step.
#[derive(Clone)]
pub struct Aggregate {
    key: FieldPath,
    specs: Arc<[AggregateSpec]>,
    emit: bool,
    final_output: Option<Arc<FinalOutput>>,
    state: StateSpec<AggregateState>,
    key_buf: Vec<u8>,
    inputs: Vec<Num>,
    /// Field position hints: the key, then each aggregate's input.
    hints: Vec<u32>,
}

impl Aggregate {
    /// An aggregate step keeping state in table `table`.
    pub fn new(
        table: &str,
        key: FieldPath,
        specs: Vec<AggregateSpec>,
        emit: bool,
        final_output: Option<FinalOutput>,
    ) -> Self {
        let specs_len = specs.len();
        Aggregate {
            key,
            specs: specs.into(),
            emit,
            final_output: final_output.map(Arc::new),
            state: StateSpec::new(table),
            key_buf: Vec::with_capacity(32),
            inputs: Vec::new(),
            hints: vec![0; specs_len + 1],
        }
    }
}

impl DocStep for Aggregate {
    fn apply(&mut self, doc: &mut Doc, cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        {
            let key = doc.get_path_hinted(&self.key, &mut self.hints[0]).ok_or_else(|| {
                Failure::permanent(reason::MISSING_FIELD, format!("key field `{}` is missing", self.key))
                    .with_field(self.key.as_str())
            })?;
            self.key_buf.clear();
            doc.write_value(key.value(), &mut self.key_buf);
        }
        self.inputs.clear();
        for (i, s) in self.specs.iter().enumerate() {
            let n = match s.func.input() {
                None => Num::Int(1),
                Some(f) => match doc.get_path_hinted(f, &mut self.hints[i + 1]) {
                    None => Num::Empty,
                    Some(v) => {
                        let v = v.value();
                        if let Some(i) = doc.as_i64(v) {
                            Num::Int(i)
                        } else if let Some(x) = doc.as_f64(v) {
                            Num::Float(x)
                        } else if matches!(v, Value::Null) || doc.raw_text(v) == Some("null") {
                            Num::Empty
                        } else {
                            return Err(Failure::permanent(reason::BAD_TYPE, format!("`{f}` is not a number"))
                                .with_field(f.as_str()));
                        }
                    }
                },
            };
            self.inputs.push(n);
        }
        cx.set_key(&self.key_buf);
        let specs = &self.specs;
        let inputs = &self.inputs;
        let emit = self.emit;
        let mut results: [Num; 8] = [Num::Empty; 8];
        let mut many: Vec<Num> = Vec::new();
        cx.state(&self.state).update(|st| {
            let vals = st
                .get_or_insert_with(|| AggregateState::new(specs.len()))
                .values_mut(specs.len());
            for (i, s) in specs.iter().enumerate() {
                let x = inputs[i];
                let cur = vals[i];
                vals[i] = match s.func {
                    Func::Count | Func::Sum(_) => cur.add(x),
                    Func::Min(_) => {
                        if x != Num::Empty && (cur == Num::Empty || x.less(cur)) {
                            x
                        } else {
                            cur
                        }
                    }
                    Func::Max(_) => {
                        if x != Num::Empty && (cur == Num::Empty || cur.less(x)) {
                            x
                        } else {
                            cur
                        }
                    }
                };
            }
            if emit {
                if vals.len() <= results.len() {
                    results[..vals.len()].copy_from_slice(vals);
                } else {
                    many = vals.to_vec();
                }
            }
        })?;
        if emit {
            let vals = if many.is_empty() {
                &results[..specs.len()]
            } else {
                &many[..]
            };
            for (s, n) in specs.iter().zip(vals) {
                doc.set_shared(&s.name, n.value());
            }
        }
        Ok(Next::Keep)
    }

    fn finish(&mut self, cx: &mut Context<'_>, _out: &mut Vec<Doc>) -> Result<(), Failure> {
        let Some(fin) = self.final_output.clone() else {
            return Ok(());
        };
        let mut entries = cx.state_entries(&self.state)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut encoder = fin.encoder.clone();
        for (key, st) in entries {
            let mut d = Doc::object();
            for (name, what) in &fin.fields {
                let v = match what {
                    None => serde_json::from_slice(&key)
                        .map(Value::from_json)
                        .unwrap_or(Value::Null),
                    Some(j) => st.values().get(*j).copied().unwrap_or(Num::Empty).value(),
                };
                d.set(name, v);
            }
            cx.emit_with(&fin.sink, |buf| encoder.encode(&d, buf))?;
        }
        Ok(())
    }

    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_parse() {
        assert_eq!(Func::parse("count()").unwrap(), Func::Count);
        assert_eq!(
            Func::parse(" sum( amount ) ").unwrap(),
            Func::Sum(FieldPath::parse("amount").unwrap())
        );
        assert!(Func::parse("avg(x)").is_err());
        assert!(Func::parse("sum()").is_err());
        assert!(Func::parse("sum(x").is_err());
        assert!(Func::parse("count(x)").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(Num::Int(i64::MAX).add(Num::Int(1)), Num::Float(i64::MAX as f64 + 1.0));
        assert_eq!(Num::Int(2).add(Num::Float(0.5)), Num::Float(2.5));
        assert_eq!(Num::Empty.add(Num::Int(3)), Num::Int(3));
        assert!(Num::Int(1).less(Num::Float(1.5)));
    }
}
