//! Integration tests of the keel runtime (one test binary for the crate).

mod concurrent;
mod pipeline;
mod policies;
