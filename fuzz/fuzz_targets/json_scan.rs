//! The JSON scanner behind `Doc::parse_json`: never panics, accepts exactly the JSON objects
//! `serde_json` accepts (bar numbers out of f64 range, which the scanner does not limit),
//! reads the same values, and what `write_json` writes parses back to the same document.
#![no_main]

use bytes::Bytes;
use keel_declare::doc::{Doc, Kind};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value as Json};

fuzz_target!(|data: &[u8]| {
    let ours = Doc::parse_json(Bytes::copy_from_slice(data));
    // serde_json (with its `raw_value` feature) reserves the key `$serde_json::private::RawValue`:
    // it parses that key's string as JSON and returns it in place of the object, or rejects a
    // valid object (found by this target). No oracle then: only our own checks.
    if contains(data, RAW_VALUE_TOKEN) {
        if let Ok(doc) = ours {
            check(&doc, None);
        }
        return;
    }
    let theirs = serde_json::from_slice::<Json>(data);
    match (ours, theirs) {
        (Ok(doc), Ok(Json::Object(map))) => check(&doc, Some(&map)),
        (Ok(doc), Err(e)) => {
            assert!(
                e.to_string().contains("number out of range"),
                "the scanner accepted what serde_json rejects: {e}"
            );
            check(&doc, None);
        }
        (Ok(_), Ok(v)) => panic!("the scanner accepted a non-object: {v}"),
        (Err(e), Ok(Json::Object(_))) => panic!("the scanner rejected a JSON object: {}", e.message),
        (Err(e), _) => assert_eq!(e.invalid_utf8, std::str::from_utf8(data).is_err(), "{}", e.message),
    }
});

/// serde_json's private marker key for `RawValue`.
const RAW_VALUE_TOKEN: &[u8] = b"$serde_json::private::RawValue";

fn contains(data: &[u8], needle: &[u8]) -> bool {
    data.windows(needle.len()).any(|w| w == needle)
}

fn check(doc: &Doc, map: Option<&Map<String, Json>>) {
    let names: Vec<String> = doc.names().map(str::to_owned).collect();
    for name in &names {
        let v = doc.get(name).expect("a listed name is found");
        let kind = doc.kind(v);
        let text = doc.raw_text(v).expect("a parsed value is raw text");
        let _ = doc.as_i64(v);
        let f = doc.as_f64(v);
        let s = doc.as_str(v);
        let mut out = Vec::new();
        doc.write_value(v, &mut out);
        assert_eq!(out, text.as_bytes());
        match kind {
            Kind::Integer => {
                assert!(!text.contains(['.', 'e', 'E']), "integer {text}");
                assert!(f.is_some(), "integer {text} as f64");
            }
            Kind::Float => assert!(f.is_some() || text.contains(['e', 'E']), "float {text} as f64"),
            Kind::String => assert!(s.is_some(), "string {text}"),
            _ => {}
        }
        if let Some(map) = map {
            let want = &map[name.as_str()];
            assert_eq!(&doc.to_json_value(v), want, "field {name:?}");
            let ok = match kind {
                Kind::Null => want.is_null(),
                Kind::Bool => want.is_boolean(),
                Kind::Integer | Kind::Float => want.is_number(),
                Kind::String => want.is_string(),
                Kind::Array => want.is_array(),
                Kind::Object => want.is_object(),
            };
            assert!(ok, "kind {kind:?} of {text}");
            if let Some(s) = &s {
                assert_eq!(Some(s.as_ref()), want.as_str());
            }
        }
    }
    if let Some(map) = map {
        assert_eq!(doc.to_json(), Json::Object(map.clone()));
    }
    // written back, it parses to the same document
    let mut out = Vec::new();
    doc.write_json(&mut out);
    let again = Doc::parse_json(Bytes::from(out)).expect("write_json output parses");
    assert_eq!(again.to_json(), doc.to_json());
}
