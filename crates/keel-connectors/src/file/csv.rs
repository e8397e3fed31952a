//! CSV as RFC 4180 defines it, on top of [`csv_core`]: the dialect, and the framing of a
//! byte stream into records (a record ends at a line break outside quotes).
//!
//! `csv-core` is the parser of the `csv` crate: a table-driven DFA that never fails (it
//! prefers *a* parse to none) and keeps its state between calls, so a record can be split
//! across reads without copying or rescanning what was already seen. It treats CRLF, LF and
//! CR each as one terminator, skips empty lines, and reads `""` inside quotes as a quote. A
//! quote in the middle of an unquoted field is kept as text, and text after a closing quote
//! is appended to the field (`"a"b` is `ab`), as the `csv` crate does.
//!
//! csv-core also drops a UTF-8 BOM at the start of *any* input it is first given; keel only
//! wants that at the start of a file, so [`Framer`] and [`parse_record`] hide the BOM check
//! from it (their first call gives it one byte) and the file source skips the BOM itself.

use csv_core::{ReadFieldResult, ReadRecordResult, Reader, ReaderBuilder};

/// The CSV dialect: which bytes delimit, quote and escape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsvDialect {
    /// Field delimiter (default `,`).
    pub delimiter: u8,
    /// Quote character (default `"`); doubled inside a quoted field it is a quote.
    pub quote: u8,
    /// An escape character for quotes inside quoted fields (`\"`), if any (default none).
    pub escape: Option<u8>,
    /// The first record of each file is a header line naming the columns (default true).
    pub header: bool,
}

impl Default for CsvDialect {
    fn default() -> Self {
        CsvDialect {
            delimiter: b',',
            quote: b'"',
            escape: None,
            header: true,
        }
    }
}

impl CsvDialect {
    /// A csv-core reader for this dialect.
    pub fn reader(&self) -> Reader {
        ReaderBuilder::new()
            .delimiter(self.delimiter)
            .quote(self.quote)
            .escape(self.escape)
            .double_quote(true)
            .build()
    }
}

/// Finds where CSV records end in a stream given piece by piece.
///
/// Public only so that the fuzz targets (`fuzz/fuzz_targets/csv.rs`) can drive it; the file
/// source is its one user.
#[doc(hidden)]
#[derive(Debug)]
pub struct Framer {
    reader: Reader,
    fresh: bool,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl Framer {
    pub fn new(dialect: &CsvDialect) -> Self {
        Framer {
            reader: dialect.reader(),
            fresh: true,
            out: vec![0; 16 << 10],
            ends: vec![0; 512],
        }
    }

    /// Forgets any record in progress: the next byte given starts a record.
    pub fn reset(&mut self) {
        self.reader.reset();
        self.fresh = true;
    }

    /// Scans `input`, the bytes that follow those already given. Returns the number of bytes
    /// up to and including the terminator of the record in progress when it ends within
    /// `input`, or `None` when all of `input` belongs to it. Leading line breaks (empty lines)
    /// belong to the record that follows them.
    pub fn scan(&mut self, input: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at < input.len() {
            // the first call of a fresh reader gets one byte, so that csv-core never takes a
            // BOM-like start of a field for the start of a file
            let end = if self.fresh { at + 1 } else { input.len() };
            self.fresh = false;
            let (res, nin, _, _) = self.reader.read_record(&input[at..end], &mut self.out, &mut self.ends);
            at += nin;
            if res == ReadRecordResult::Record {
                return Some(at);
            }
        }
        None
    }

    /// At the end of the input: true when the record in progress is complete (it did not
    /// stop inside a quoted field). The framer is then ready for a new record.
    pub fn finish(&mut self) -> bool {
        // a line break ends the record unless a quoted field is open (csv-core's `Clone`
        // of a reader does not copy its tables, so the probe runs on the reader itself)
        let (res, ..) = self.reader.read_record(b"\n", &mut self.out, &mut self.ends);
        self.reset();
        res == ReadRecordResult::Record
    }
}

/// One CSV record parsed into fields.
#[derive(Clone, Debug, Default)]
pub struct CsvFields {
    /// The unescaped bytes of all fields, one after another.
    pub data: Vec<u8>,
    /// Per field: its end in `data`, and whether it was quoted in the input.
    pub fields: Vec<(usize, bool)>,
}

impl CsvFields {
    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when there is no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Field `i`: its bytes and whether it was quoted.
    pub fn get(&self, i: usize) -> Option<(&[u8], bool)> {
        let (end, quoted) = *self.fields.get(i)?;
        let start = if i == 0 { 0 } else { self.fields[i - 1].0 };
        Some((&self.data[start..end], quoted))
    }
}

/// Why a record could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsvParseError {
    /// A quoted field is not closed at the end of the record.
    #[error("a quoted field is not closed")]
    OpenQuote,
    /// A line break outside quotes: the text holds more than one record.
    #[error("more than one CSV record: a line break outside quotes at byte {0}")]
    TwoRecords(usize),
}

/// Parses single records into fields.
#[derive(Debug)]
pub struct CsvParser {
    dialect: CsvDialect,
    reader: Reader,
}

/// A new reader: csv-core's `Clone` of a reader does not copy its transition tables.
impl Clone for CsvParser {
    fn clone(&self) -> Self {
        CsvParser::new(&self.dialect)
    }
}

impl CsvParser {
    /// A parser of `dialect`.
    pub fn new(dialect: &CsvDialect) -> Self {
        CsvParser {
            dialect: *dialect,
            reader: dialect.reader(),
        }
    }

    /// Parses one record (`raw`, with or without its terminator) into `fields`.
    pub fn parse(&mut self, raw: &[u8], fields: &mut CsvFields) -> Result<(), CsvParseError> {
        let reader = &mut self.reader;
        reader.reset();
        fields.fields.clear();
        if raw.iter().all(|&b| b == b'\n' || b == b'\r') {
            fields.data.clear();
            return Ok(());
        }
        let mut out = std::mem::take(&mut fields.data);
        // unescaping never makes a field longer: the output cannot fill up
        out.clear();
        out.resize(raw.len() + 1, 0);
        let mut nout_total = 0;
        let mut at = 0;
        let mut field_start = 0;
        let mut first = true;
        let result = loop {
            // one byte first: see the module doc about the BOM
            let end = if first { raw.len().min(1) } else { raw.len() };
            first = false;
            // at the end, a line break closes the last field unless a quoted one is open
            let (input, synthetic) = if at == raw.len() {
                (b"\n".as_slice(), true)
            } else {
                (&raw[at..end], false)
            };
            let (res, nin, nout) = reader.read_field(input, &mut out[nout_total..]);
            if synthetic {
                if res == ReadFieldResult::InputEmpty {
                    break Err(CsvParseError::OpenQuote);
                }
            } else {
                at += nin;
            }
            nout_total += nout;
            match res {
                ReadFieldResult::InputEmpty | ReadFieldResult::OutputFull => {}
                ReadFieldResult::Field { record_end } => {
                    fields
                        .fields
                        .push((nout_total, raw.get(field_start) == Some(&self.dialect.quote)));
                    field_start = at;
                    if record_end || synthetic {
                        break match raw[at..].iter().position(|&b| b != b'\n' && b != b'\r') {
                            None => Ok(()),
                            Some(i) => Err(CsvParseError::TwoRecords(at + i)),
                        };
                    }
                }
                ReadFieldResult::End => break Ok(()),
            }
        };
        out.truncate(nout_total);
        fields.data = out;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_finds_ends_and_open_quotes() {
        let d = CsvDialect::default();
        let mut f = Framer::new(&d);
        assert_eq!(f.scan(b"1,\"a\nb\"\n2"), Some(8));
        assert_eq!(f.scan(b"2,x"), None);
        assert!(f.finish());
        assert_eq!(f.scan(b"1,\"open\n2,x\n"), None);
        assert!(!f.finish());
        assert_eq!(f.scan(b"1,\"x\"\r\n"), Some(6));
    }

    fn parse(raw: &str) -> Result<Vec<(String, bool)>, CsvParseError> {
        // a clone must work as well as the original
        let mut p = CsvParser::new(&CsvDialect::default()).clone();
        let mut f = CsvFields::default();
        p.parse(raw.as_bytes(), &mut f)?;
        Ok((0..f.len())
            .map(|i| {
                let (b, q) = f.get(i).unwrap();
                (String::from_utf8(b.to_vec()).unwrap(), q)
            })
            .collect())
    }

    #[test]
    fn parser_fields_quotes_and_errors() {
        let s = |v: &str, q| (v.to_owned(), q);
        assert_eq!(
            parse("1,\"a, \"\"b\"\"\",,\"\",\"x\ny\"").unwrap(),
            vec![
                s("1", false),
                s("a, \"b\"", true),
                s("", false),
                s("", true),
                s("x\ny", true)
            ]
        );
        assert_eq!(parse("a,\r\n").unwrap(), vec![s("a", false), s("", false)]);
        assert_eq!(parse("a,").unwrap(), vec![s("a", false), s("", false)]);
        assert_eq!(parse("\u{feff}a").unwrap(), vec![s("\u{feff}a", false)]);
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("x,\"open"), Err(CsvParseError::OpenQuote));
        assert_eq!(parse("a\nb"), Err(CsvParseError::TwoRecords(2)));
        let mut p = CsvParser::new(&CsvDialect {
            delimiter: b';',
            quote: b'\'',
            escape: Some(b'\\'),
            header: true,
        });
        let mut f = CsvFields::default();
        p.parse(b"'a\\'b';c", &mut f).unwrap();
        assert_eq!(f.get(0), Some((b"a'b".as_slice(), true)));
        assert_eq!(f.get(1), Some((b"c".as_slice(), false)));
    }
}
