//! Integration tests of the keel runtime (one test binary for the crate).

mod pipeline;
mod policies;
