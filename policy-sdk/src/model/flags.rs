//! [`CpuFlags`]: a host's CPU flag names, shared between hosts that have the same list.
//!
//! Hosts of a cluster mostly share one CPU model, so their flag lists are equal: decoding a
//! 10,000-host snapshot used to make 10,000 copies of the same ~20 names (most of a guest's
//! allocations for a full snapshot, and most of its string decoding). On the wire (ABI 7) a
//! list equal to the previous host's in the same message is sent as `Same`, and decodes to
//! that list's storage; a list equal to the one decoded just before it shares its storage
//! too. JSON and TOML keep plain lists.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::ops::Deref;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A host's CPU flags: a list of names, cheap to clone (shared storage), read as a slice.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct CpuFlags(Arc<[String]>);

std::thread_local! {
    /// The flag list this thread decoded last in the message it is decoding: the next equal
    /// list shares it, and a "same as the previous host" entry is it.
    static LAST_DECODED: RefCell<Option<Arc<[String]>>> = const { RefCell::new(None) };
    /// The flag list this thread encoded last in the message it is encoding: the next
    /// equal list is sent as "same as the previous host".
    static LAST_ENCODED: RefCell<Option<Arc<[String]>>> = const { RefCell::new(None) };
}

/// Forgets the lists of the previous message (the codec calls it when it starts encoding
/// or decoding one): "same as the previous host" only ever refers to a list of the same
/// message.
pub(crate) fn start_message() {
    LAST_DECODED.with(|l| *l.borrow_mut() = None);
    LAST_ENCODED.with(|l| *l.borrow_mut() = None);
}

impl CpuFlags {
    /// Whether both lists are the same storage or hold the same names (the storage
    /// comparison first: shared lists compare in one step).
    pub fn same_as(&self, other: &CpuFlags) -> bool {
        self.shares_storage(other) || self.0 == other.0
    }

    /// Whether both lists are the same storage (a clone of one another, or decoded as
    /// "the same as the previous host").
    pub fn shares_storage(&self, other: &CpuFlags) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Makes equal lists share one storage: each list equal to one of the few distinct
    /// lists met last becomes a clone of it. Hosts of a cluster mostly share a CPU model,
    /// so the engine does this once as hosts come in; the encoder and the indexes then
    /// tell equal lists by their storage instead of comparing names at every snapshot.
    pub fn share_equal<'a>(lists: impl IntoIterator<Item = &'a mut CpuFlags>) {
        let mut recent = RecentFlagLists::default();
        for list in lists {
            match recent.find(list) {
                Some((shared, ())) => *list = shared.clone(),
                None => recent.remember(list, ()),
            }
        }
    }

    /// The names as a slice.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// The few distinct CPU flag lists met last, each with a value of the caller's (nothing,
/// or the row of an index that has it): what makes equal lists share storage
/// ([`CpuFlags::share_equal`]) and what lets an index copy the row of an equal list. A list
/// is looked up by its storage first (lists that share it compare in one step), then by its
/// names.
#[derive(Debug)]
pub(crate) struct RecentFlagLists<T> {
    lists: Vec<(CpuFlags, T)>,
}

impl<T> Default for RecentFlagLists<T> {
    fn default() -> Self {
        Self { lists: Vec::new() }
    }
}

impl<T: Copy> RecentFlagLists<T> {
    /// Lists remembered at most; the oldest is forgotten first.
    pub(crate) const KEPT: usize = 8;

    /// The remembered list equal to `flags`, with its value.
    pub(crate) fn find(&self, flags: &CpuFlags) -> Option<&(CpuFlags, T)> {
        self.lists
            .iter()
            .find(|(f, _)| f.shares_storage(flags))
            .or_else(|| self.lists.iter().find(|(f, _)| f.0 == flags.0))
    }

    /// The value of the remembered list equal to `flags`. A list found by its names is
    /// remembered by `flags`' storage too, so the lists that share that storage (hosts
    /// decoded from one message do) are found in one step next time.
    pub(crate) fn value_of(&mut self, flags: &CpuFlags) -> Option<T> {
        let &(ref found, value) = self.find(flags)?;
        if !found.shares_storage(flags) {
            self.remember(flags, value);
        }
        Some(value)
    }

    /// Remembers `flags` (its storage) with `value`.
    pub(crate) fn remember(&mut self, flags: &CpuFlags, value: T) {
        if self.lists.len() == Self::KEPT {
            self.lists.remove(0);
        }
        self.lists.push((flags.clone(), value));
    }
}

impl Deref for CpuFlags {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Debug for CpuFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl From<Vec<String>> for CpuFlags {
    fn from(names: Vec<String>) -> Self {
        CpuFlags(names.into())
    }
}

impl FromIterator<String> for CpuFlags {
    fn from_iter<I: IntoIterator<Item = String>>(names: I) -> Self {
        CpuFlags(names.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a CpuFlags {
    type Item = &'a String;
    type IntoIter = core::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The names of a list, serialized as a sequence.
struct Names<'a>(&'a [String]);

impl Serialize for Names<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

/// Variants of the binary form.
const VARIANTS: &[&str] = &["List", "Same"];

impl Serialize for CpuFlags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return Names(&self.0).serialize(serializer);
        }
        let same = LAST_ENCODED.with(|l| {
            let mut last = l.borrow_mut();
            let same = last
                .as_ref()
                .is_some_and(|prev| Arc::ptr_eq(prev, &self.0) || **prev == *self.0);
            if !same {
                *last = Some(self.0.clone());
            }
            same
        });
        if same {
            serializer.serialize_unit_variant("CpuFlags", 1, "Same")
        } else {
            serializer.serialize_newtype_variant("CpuFlags", 0, "List", &Names(&self.0))
        }
    }
}

impl<'de> Deserialize<'de> for CpuFlags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_seq(FlagsVisitor)
        } else {
            deserializer.deserialize_enum("CpuFlags", VARIANTS, WireVisitor)
        }
    }
}

/// The binary form: a list, or "the same list as the previous host of this message".
struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = CpuFlags;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of CPU flag names or the previous host's")
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<CpuFlags, A::Error> {
        use serde::de::{Error, VariantAccess};
        let (variant, access) = data.variant::<u32>()?;
        match variant {
            0 => access.newtype_variant_seed(ListSeed),
            1 => {
                access.unit_variant()?;
                LAST_DECODED
                    .with(|l| l.borrow().clone())
                    .map(CpuFlags)
                    .ok_or_else(|| {
                        A::Error::custom("CPU flags: \"same as the previous host\" before any list")
                    })
            }
            other => Err(A::Error::custom(alloc::format!(
                "CPU flags: unknown form {other}"
            ))),
        }
    }
}

/// Decodes the list of the `List` form.
struct ListSeed;

impl<'de> serde::de::DeserializeSeed<'de> for ListSeed {
    type Value = CpuFlags;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<CpuFlags, D::Error> {
        deserializer.deserialize_seq(FlagsVisitor)
    }
}

struct FlagsVisitor;

impl<'de> Visitor<'de> for FlagsVisitor {
    type Value = CpuFlags;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of CPU flag names")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CpuFlags, A::Error> {
        let last = LAST_DECODED.with(|l| l.borrow().clone());
        let previous: &[String] = last.as_deref().unwrap_or(&[]);
        // Names equal to the previous list's so far; a list of its own from the first
        // difference on.
        let mut matched = 0;
        let mut own: Option<Vec<String>> = None;
        while let Some(name) = seq.next_element::<Name<'de>>()? {
            match &mut own {
                Some(list) => list.push(name.into_string()?),
                None if previous
                    .get(matched)
                    .is_some_and(|p| p.as_bytes() == name.as_bytes()) =>
                {
                    matched += 1;
                }
                None => {
                    let mut list = Vec::with_capacity(matched + 1 + seq.size_hint().unwrap_or(0));
                    list.extend_from_slice(&previous[..matched]);
                    list.push(name.into_string()?);
                    own = Some(list);
                }
            }
        }
        let flags = match own {
            Some(list) => Arc::from(list),
            None if matched == previous.len() => last.unwrap_or_else(|| Arc::from([])),
            None => Arc::from(&previous[..matched]),
        };
        LAST_DECODED.with(|l| *l.borrow_mut() = Some(flags.clone()));
        Ok(CpuFlags(flags))
    }
}

/// One flag name as the decoder has it: borrowed from the input when it can be (bincode),
/// owned otherwise (text formats with escapes). From a binary format the name is read as
/// bytes: compared with the previous list's name as they are, and checked to be UTF-8 only
/// when it differs (a string's bincode form is its bytes).
enum Name<'de> {
    Borrowed(&'de str),
    Bytes(&'de [u8]),
    Owned(String),
}

impl Name<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Borrowed(s) => s.as_bytes(),
            Name::Bytes(b) => b,
            Name::Owned(s) => s.as_bytes(),
        }
    }

    fn into_string<E: serde::de::Error>(self) -> Result<String, E> {
        match self {
            Name::Borrowed(s) => Ok(s.into()),
            Name::Bytes(b) => core::str::from_utf8(b)
                .map(String::from)
                .map_err(|_| E::custom("a CPU flag name is not UTF-8")),
            Name::Owned(s) => Ok(s),
        }
    }
}

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CPU flag name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name::Owned(v.into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name::Owned(v))
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Name<'de>, E> {
                Ok(Name::Bytes(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Name<'de>, E> {
                core::str::from_utf8(v)
                    .map(|s| Name::Owned(s.into()))
                    .map_err(|_| E::custom("a CPU flag name is not UTF-8"))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(NameVisitor)
        } else {
            deserializer.deserialize_bytes(NameVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec;

    fn flags(names: &[&str]) -> CpuFlags {
        names.iter().map(|n| String::from(*n)).collect()
    }

    #[test]
    fn a_flag_list_found_by_its_names_is_found_by_its_storage_next_time() {
        let names = || CpuFlags::from(vec!["aes".to_string(), "avx2".to_string()]);
        let (first, second) = (names(), names());
        let mut recent = RecentFlagLists::default();
        recent.remember(&first, 3);
        assert_eq!(recent.value_of(&second), Some(3));
        assert!(
            recent.lists.iter().any(|(f, _)| f.shares_storage(&second)),
            "the equal list's own storage is remembered"
        );
        let other = CpuFlags::from(vec!["sse4_2".to_string()]);
        assert_eq!(
            recent.value_of(&other),
            None,
            "a list with other names is not found"
        );
    }

    #[test]
    fn equal_lists_come_to_share_one_storage_and_the_others_keep_theirs() {
        let names: [&[&str]; 6] = [
            &["aes", "avx2"],
            &["vmx"],
            &["aes", "avx2"],
            &["aes"],
            &["aes", "avx2"],
            &["vmx"],
        ];
        let mut lists: Vec<CpuFlags> = names.iter().map(|n| flags(n)).collect();
        CpuFlags::share_equal(lists.iter_mut());
        for (i, list) in lists.iter().enumerate() {
            assert_eq!(list.as_slice(), names[i], "list {i} keeps its names");
        }
        let shared = |a: usize, b: usize| lists[a].shares_storage(&lists[b]);
        assert!(shared(0, 2) && shared(0, 4) && shared(1, 5));
        assert!(!shared(0, 1) && !shared(0, 3) && !shared(1, 3));
    }

    #[test]
    fn a_list_equal_to_the_previous_one_in_a_message_crosses_as_same_and_shares_storage() {
        let a = flags(&["aes", "avx2", "sse4_2"]);
        let b = flags(&["aes", "vmx"]);
        let plain: Vec<String> = a.to_vec();
        // One list alone: the `List` variant (0), then the names as a plain list; a second
        // message starts afresh, so it encodes the same.
        let alone = codec::encode(&a).unwrap();
        let mut want = alloc::vec![0u8];
        want.extend(codec::encode(&plain).unwrap());
        assert_eq!(alone, want);
        assert_eq!(
            codec::encode(&a).unwrap(),
            alone,
            "no state across messages"
        );
        // In one message: a, a (same), b, a (a list again: only the previous one is
        // referred to), a copy of a (same: compared by names, not storage).
        let copy = flags(&["aes", "avx2", "sse4_2"]);
        let lists = alloc::vec![a.clone(), a.clone(), b.clone(), a.clone(), copy];
        let bytes = codec::encode(&lists).unwrap();
        let list_bytes = |f: &CpuFlags| codec::encode(f).unwrap().len();
        assert_eq!(
            bytes.len(),
            1 + list_bytes(&a) + 1 + list_bytes(&b) + list_bytes(&a) + 1,
            "length, a, same, b, a, same"
        );
        let back: Vec<CpuFlags> = codec::decode(&bytes).unwrap();
        assert_eq!(back, lists);
        assert!(Arc::ptr_eq(&back[0].0, &back[1].0), "same shares storage");
        assert!(Arc::ptr_eq(&back[3].0, &back[4].0), "same shares storage");
        // Lists decoded one after another that only share names: each decodes to itself.
        for names in [
            &["aes", "avx2", "sse4_2", "vmx"][..],
            &["aes", "avx2"],
            &["aes", "x", "sse4_2"],
            &[],
            &["aes", "avx2", "sse4_2"],
        ] {
            let decoded: CpuFlags = codec::decode(&codec::encode(&flags(names)).unwrap()).unwrap();
            assert_eq!(decoded.as_slice(), flags(names).as_slice(), "{names:?}");
        }
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"["aes","avx2","sse4_2"]"#);
        assert_eq!(
            serde_json::to_string(&lists[..2]).unwrap(),
            r#"[["aes","avx2","sse4_2"],["aes","avx2","sse4_2"]]"#,
            "JSON lists stay plain"
        );
        assert_eq!(serde_json::from_str::<CpuFlags>(&json).unwrap(), a);
        assert_eq!(
            serde_json::from_str::<CpuFlags>(r#"["a\"b"]"#)
                .unwrap()
                .as_slice(),
            ["a\"b"],
            "escaped names decode owned"
        );
    }

    #[test]
    fn same_as_the_previous_host_with_no_list_before_it_in_the_message_fails_the_decode() {
        // A list decoded in an earlier message on this thread does not count.
        let _: CpuFlags = codec::decode(&codec::encode(&flags(&["aes"])).unwrap()).unwrap();
        let errors = [
            codec::decode::<CpuFlags>(&[1]).map(|_| ()),
            // A message of two lists, both "same".
            codec::decode::<Vec<CpuFlags>>(&[2, 1, 1]).map(|_| ()),
        ];
        for err in errors {
            let err = err.unwrap_err();
            assert!(err.to_string().contains("before any list"), "{err}");
        }
        let err = codec::decode::<CpuFlags>(&[2]).unwrap_err();
        assert!(err.to_string().contains("unknown form 2"), "{err}");
    }

    #[test]
    fn a_flag_name_that_is_not_utf8_fails_the_decode() {
        // The `List` form with one name of two bytes, 0xff 0xfe.
        let bytes = [0u8, 1, 2, 0xff, 0xfe];
        let err = codec::decode::<CpuFlags>(&bytes).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}
