//! `Envelope::decode` over arbitrary lines: never panics. The first byte picks the mode:
//! the line as it is, or the rest as an envelope *body* (a JSON object) with a correct
//! checksum field appended, so the fuzzer gets past the checksum to the JSON. Whatever
//! decodes encodes and decodes back to itself, and its accessors do not panic.
#![no_main]

use keel::dead_letter::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        let _ = Envelope::decode(data);
        return;
    };
    let line = if mode & 1 == 0 {
        data.to_vec()
    } else {
        // what `encode` does: checksum of the body, then the field before the closing brace
        let mut body = rest.to_vec();
        let crc = crc32c::crc32c(&body);
        if body.last() == Some(&b'}') {
            body.pop();
        }
        body.extend_from_slice(format!(",\"crc32c\":\"{crc:08x}\"}}").as_bytes());
        body
    };
    if let Ok(e) = Envelope::decode(&line) {
        let _ = e.original_value();
        let _ = e.original_key();
        let _ = e.original_headers();
        let _ = e.identity();
        let mut out = Vec::new();
        e.encode(&mut out);
        let again = Envelope::decode(&out).expect("an encoded envelope decodes");
        assert_eq!(again, e);
    }
});
