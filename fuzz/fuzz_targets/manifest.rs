//! `Manifest::decode` over arbitrary bytes: never panics. The first byte picks the mode:
//! raw bytes as they are, or the rest as a manifest *body* under a header with the right
//! length and checksum (so the fuzzer gets past the checksum to the JSON). Whatever decodes
//! encodes and decodes back to itself.
#![no_main]

use keel::checkpoint::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        let _ = Manifest::decode(data);
        return;
    };
    let bytes = if mode & 1 == 0 {
        data.to_vec()
    } else {
        let mut b = format!(
            "keel-checkpoint v1 len={} crc32c={:08x}\n",
            rest.len(),
            crc32c::crc32c(rest)
        )
        .into_bytes();
        b.extend_from_slice(rest);
        b
    };
    if let Ok(m) = Manifest::decode(&bytes) {
        let again = Manifest::decode(&m.encode()).expect("an encoded manifest decodes");
        assert_eq!(again, m);
    }
});
