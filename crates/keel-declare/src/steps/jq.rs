//! `transform` and `filter`: jq programs (the jaq implementation), compiled once.

use std::sync::Arc;

use jaq_core::data::JustLut;
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use jaq_json::{Num, Val};
use keel::failure::reason;
use keel::{Context, Failure};

use super::{DocStep, Next};
use crate::doc::Doc;

type Data = JustLut<Val>;

/// A compiled jq program.
pub struct JqProgram {
    filter: jaq_core::Filter<Data>,
    source: String,
}

impl std::fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JqProgram").field("source", &self.source).finish()
    }
}

fn position(whole: &str, part: &str) -> String {
    let start = load::span(whole, part).start;
    let before = &whole[..start.min(whole.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("{line}:{col}")
}

impl JqProgram {
    /// Compiles `code` with the jq standard library. The error names the position.
    pub fn compile(code: &str) -> Result<JqProgram, String> {
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
        let arena = Arena::default();
        let loader = Loader::new(defs);
        let modules = loader.load(&arena, File { code, path: () }).map_err(|errs| {
            let mut msgs = Vec::new();
            for (file, err) in errs {
                match err {
                    load::Error::Io(es) => msgs.extend(es.into_iter().map(|(p, e)| format!("cannot load {p}: {e}"))),
                    load::Error::Lex(es) => msgs.extend(
                        es.into_iter()
                            .map(|(exp, rest)| format!("at {}: expected {}", position(file.code, rest), exp.as_str())),
                    ),
                    load::Error::Parse(es) => msgs.extend(es.into_iter().map(|(exp, found)| {
                        let f = if found.is_empty() {
                            "end of input".to_string()
                        } else {
                            format!("`{found}`")
                        };
                        format!(
                            "at {}: expected {}, found {f}",
                            position(file.code, found),
                            exp.as_str()
                        )
                    })),
                }
            }
            msgs.join("; ")
        })?;
        let filter = Compiler::default().with_funs(funs).compile(modules).map_err(|errs| {
            let mut msgs = Vec::new();
            for (file, es) in errs {
                for (name, undef) in es {
                    msgs.push(format!(
                        "at {}: undefined {} `{name}`",
                        position(file.code, name),
                        undef.as_str()
                    ));
                }
            }
            msgs.join("; ")
        })?;
        Ok(JqProgram {
            filter,
            source: code.to_owned(),
        })
    }

    /// Runs the program on `doc`; every output in order.
    pub fn run(&self, doc: &Doc) -> Result<Vec<serde_json::Value>, Failure> {
        let input = to_val(&doc.to_json());
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let mut out = Vec::new();
        for r in self.filter.id.run((ctx, input)) {
            match r {
                Ok(v) => out.push(from_val(&v)),
                Err(exn) => {
                    let msg = match exn.get_err() {
                        Ok(e) => e.to_string(),
                        Err(exn) => match exn.get_halt() {
                            Ok(code) => format!("halt with exit code {code}"),
                            Err(_) => "jq exception".to_string(),
                        },
                    };
                    return Err(Failure::permanent(
                        reason::TRANSFORM_ERROR,
                        format!("jq `{}`: {msg}", self.source),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// `transform`: each output object becomes a record; other outputs are errors.
#[derive(Clone)]
pub struct JqTransform(pub Arc<JqProgram>);

impl DocStep for JqTransform {
    fn apply(&mut self, doc: &mut Doc, _cx: &mut Context<'_>, more: &mut Vec<Doc>) -> Result<Next, Failure> {
        let mut outputs = Vec::new();
        for v in self.0.run(doc)? {
            match Doc::from_json(v) {
                Ok(d) => outputs.push(d),
                Err(other) => {
                    return Err(Failure::permanent(
                        reason::TRANSFORM_ERROR,
                        format!("jq `{}` produced {other}, not an object", self.0.source),
                    ));
                }
            }
        }
        let mut outputs = outputs.into_iter();
        match outputs.next() {
            None => Ok(Next::Drop),
            Some(first) => {
                *doc = first;
                more.extend(outputs);
                Ok(Next::Keep)
            }
        }
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

/// `filter`: keeps a record when the program's first output is neither `false` nor `null`.
#[derive(Clone)]
pub struct JqFilter(pub Arc<JqProgram>);

impl DocStep for JqFilter {
    fn apply(&mut self, doc: &mut Doc, _cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        let keep = matches!(
            self.0.run(doc)?.first(),
            Some(v) if !matches!(v, serde_json::Value::Null | serde_json::Value::Bool(false))
        );
        Ok(if keep { Next::Keep } else { Next::Drop })
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

fn to_val(v: &serde_json::Value) -> Val {
    use serde_json::Value as J;
    match v {
        J::Null => Val::Null,
        J::Bool(b) => Val::Bool(*b),
        J::Number(n) => Val::Num(if let Some(i) = n.as_i64() {
            Num::from_integral(i)
        } else if let Some(u) = n.as_u64() {
            Num::from_integral(u)
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        J::String(s) => Val::utf8_str(s.clone().into_bytes()),
        J::Array(a) => a.iter().map(to_val).collect(),
        J::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (Val::utf8_str(k.clone().into_bytes()), to_val(v)))
                .collect(),
        ),
    }
}

fn from_val(v: &Val) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Val::Null => J::Null,
        Val::Bool(b) => J::Bool(*b),
        Val::Num(n) => match n {
            Num::Int(i) => J::from(*i as i64),
            Num::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            other => serde_json::from_str(&other.to_string()).unwrap_or(J::Null),
        },
        Val::TStr(b) | Val::BStr(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(a) => J::Array(a.iter().map(from_val).collect()),
        Val::Obj(o) => J::Object(
            o.iter()
                .map(|(k, v)| {
                    let k = match k {
                        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                        other => other.to_string(),
                    };
                    (k, from_val(v))
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn doc(s: &str) -> Doc {
        Doc::parse_json(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn transform_and_errors() {
        let p = JqProgram::compile(".total = .price * .qty | del(.debug)").unwrap();
        let out = p.run(&doc(r#"{"price": 2, "qty": 3, "debug": 1}"#)).unwrap();
        assert_eq!(out, vec![serde_json::json!({"price": 2, "qty": 3, "total": 6})]);
        let err = p.run(&doc(r#"{"price": {}, "qty": 3}"#)).unwrap_err();
        assert_eq!(err.reason, "transform_error");
        assert!(
            JqProgram::compile(".a | ").unwrap_err().contains("1:"),
            "position in error"
        );
        assert!(JqProgram::compile("nope(1)").unwrap_err().contains("undefined"));
    }

    #[test]
    fn many_outputs() {
        let p = JqProgram::compile(".items[] | {sku: .}").unwrap();
        assert_eq!(p.run(&doc(r#"{"items": ["a", "b"]}"#)).unwrap().len(), 2);
    }
}
