//! CSV as RFC 4180 defines it, through whole pipelines: records that span lines, every
//! kind of field, ragged rows, and keel's CSV output read back by keel.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::{Case, pipeline};

fn csv_pipeline(parse_extra: &str, errors: &str) -> String {
    let steps = format!("[[steps]]\ntype = \"parse\"\nformat = \"csv\"\n{parse_extra}\n");
    format!("{}\n{errors}", pipeline("csv", &steps, ""))
}

#[test]
fn quoted_newlines_quotes_commas_empty_fields_unicode_bom_ragged_rows() {
    let input = concat!(
        "\u{feff}id,name,note\r\n",
        "1,\"two\nlines\",plain\r\n",
        "2,\"crlf\r\ninside\",\"say \"\"hi\"\", ok\"\r\n",
        "3,,\"\"\r\n",
        "\r\n",
        "4,Zoë 日本,\"🦀\"\n",
        "5,too,many,fields\r\n",
        "6,\"few\ner\"\r\n",
        "7,\"a,b\",\"last\nrecord\"",
    );
    let c = Case::new(
        &csv_pipeline("empty_fields = \"null_unless_quoted\"", ""),
        &[("a.csv", input)],
    );
    let s = c.run();
    assert_eq!((s.records_in, s.records_out, s.dead_letters), (7, 5, 2));
    let mut out = c.json("out");
    out.sort_by_key(|v| v["id"].as_str().unwrap().to_owned());
    assert_eq!(
        out,
        vec![
            json!({"id": "1", "name": "two\nlines", "note": "plain"}),
            json!({"id": "2", "name": "crlf\r\ninside", "note": "say \"hi\", ok"}),
            json!({"id": "3", "name": null, "note": ""}),
            json!({"id": "4", "name": "Zoë 日本", "note": "🦀"}),
            json!({"id": "7", "name": "a,b", "note": "last\nrecord"}),
        ]
    );
    let dead = c.json("dead");
    let got: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (d["raw"].as_str().unwrap(), d["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![("5,too,many,fields", "column_count"), ("6,\"few\ner\"", "column_count")]
    );
}

#[test]
fn dialect_columns_and_an_escape_character() {
    let c = Case::new(
        &csv_pipeline(
            "delimiter = \";\"\nquote = \"'\"\nescape = \"\\\\\"\ncolumns = [\"id\", \"text\"]\nempty_fields = \"null\"",
            "",
        ),
        &[("a.csv", "1;'it\\'s;\nfine'\n2;\n3;''\n")],
    );
    let s = c.run();
    assert_eq!((s.records_out, s.dead_letters), (3, 0));
    let mut out = c.json("out");
    out.sort_by_key(|v| v["id"].as_str().unwrap().to_owned());
    assert_eq!(out[0]["text"], "it's;\nfine");
    assert_eq!(out[1]["text"], Value::Null);
    assert_eq!(out[2]["text"], Value::Null);
    // a bad dialect is a config error
    let c = Case::new(&csv_pipeline("delimiter = \"'\"\nquote = \"'\"", ""), &[]);
    assert!(c.errors().contains("must differ"), "{}", c.errors());
    let c = Case::new(&csv_pipeline("header = false", ""), &[]);
    assert!(c.errors().contains("need `columns`"), "{}", c.errors());
}

#[test]
fn a_stray_quote_costs_one_line_and_an_oversized_record_is_dead_lettered() {
    let mut input = String::from("id,v\n1,\"stray\n");
    for i in 2..200 {
        input.push_str(&format!("{i},x\n"));
    }
    input.push_str(&format!("200,{}\n201,y\n", "z".repeat(5000)));
    let c = Case::new(
        &csv_pipeline("", "[errors]\nmax_record_bytes = 1000\n"),
        &[("a.csv", &input)],
    );
    let s = c.run();
    assert_eq!((s.records_out, s.dead_letters), (199, 2));
    let dead = c.json("dead");
    assert_eq!(dead[0]["reason"], "oversized");
    assert_eq!(dead[0]["raw"], "1,\"stray");
    assert_eq!(dead[0]["stage"], "source");
    assert_eq!(dead[1]["reason"], "oversized");
    assert_eq!(dead[1]["raw"].as_str().unwrap().len(), 1000, "a bounded prefix");
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// A random field: null, empty, or text mixing commas, quotes, CR, LF, spaces, Unicode.
fn random_value(rng: &mut u64) -> Value {
    const PIECES: &[&str] = &[
        ",", "\"", "\r", "\n", "\r\n", " ", "a", "Z", "0", "-", "=", "é", "日本", "🦀", "\u{feff}", "\t", "''", "x,y",
    ];
    match xorshift(rng) % 10 {
        0 => Value::Null,
        1 => json!(""),
        _ => {
            let n = 1 + xorshift(rng) % 12;
            let s: String = (0..n)
                .map(|_| PIECES[(xorshift(rng) % PIECES.len() as u64) as usize])
                .collect();
            json!(s)
        }
    }
}

/// What keel's CSV sink writes, keel's CSV source reads back to the same records.
#[test]
fn round_trip_of_random_fields_through_the_csv_sink_and_source() {
    for seed in [1u64, 7, 42] {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut want = HashMap::new();
        let mut input = String::new();
        for id in 0..1500 {
            let doc = json!({
                "id": id.to_string(),
                "a": random_value(&mut rng),
                "b": random_value(&mut rng),
                "c": random_value(&mut rng),
            });
            input.push_str(&serde_json::to_string(&doc).unwrap());
            input.push('\n');
            want.insert(id.to_string(), doc);
        }
        // JSON lines in, CSV out
        let write = pipeline("json_lines", "[[steps]]\ntype = \"parse\"\n", "").replace(
            "path = \"out\"\n",
            "path = \"out\"\nformat = \"csv\"\ncolumns = [\"id\", \"a\", \"b\", \"c\"]\nmax_file_bytes = 20000\n",
        );
        let c = Case::new(&write, &[("a.jsonl", &input)]);
        let s = c.run();
        assert_eq!((s.records_out, s.dead_letters), (1500, 0));
        // CSV in (keel's own output), JSON lines out
        let read = csv_pipeline("empty_fields = \"null_unless_quoted\"", "")
            .replace("path = \"in\"", "path = \"out\"")
            .replace("path = \"out\"\n\n", "path = \"back\"\n\n")
            .replace("path = \"state\"", "path = \"state2\"");
        c.write("read.toml", &read);
        let loaded = keel_declare::load(&c.dir.path().join("read.toml")).unwrap();
        let s = keel_declare::build(&loaded, |_| {}).unwrap().run().unwrap();
        assert_eq!(
            (s.records_in, s.records_out, s.dead_letters),
            (1500, 1500, 0),
            "seed {seed}"
        );
        let back = c.json("back");
        assert_eq!(back.len(), 1500);
        for doc in back {
            let id = doc["id"].as_str().unwrap();
            assert_eq!(&doc, &want[id], "seed {seed}");
        }
    }
}
