//! The builtin policy modules, compiled from `builtin-policies/` by the build script and
//! embedded in the binary so the runtime works with no policy directory.

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
