//! # wasmsched-toolkit
//!
//! The author tools behind the `wasmsched` command line, as a library (the CLI only parses
//! arguments and prints):
//!
//! * [`scaffold`] (`wasmsched new`): a unit crate that builds and passes its own tests at
//!   once, with the SDK found in this repository or written from the copy embedded here;
//! * [`compile`] (`wasmsched build`): a size-optimized `wasm32-unknown-unknown` module;
//! * [`cases`] (`wasmsched test`): table cases run through the real runtime;
//! * [`check`] (`wasmsched check`): what a module holds and whether the engine loads it.
//!
//! Errors are [`wasmsched::Error`]s: bad input names the file, the case and the field.

#![warn(missing_docs)]

pub mod cases;
pub mod check;
pub mod compile;
pub mod scaffold;

/// The policy-sdk sources embedded at build time (see `build.rs`).
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));
}
