//! What crosses between the host and a guest: the versioned ABI ([`abi`]: export and import
//! names, call messages), snapshot sync messages ([`sync`]) and the codec ([`codec`]). The
//! wire format changes in this module only; `ABI.md` documents it for other languages.

pub mod abi;
pub mod codec;
pub mod sync;
