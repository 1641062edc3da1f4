//! Data derived from a snapshot once and kept up to date by whoever holds the snapshot (the
//! guest after each sync, the host's cluster after each change), so that units do not redo
//! per-host string work on every call.
//!
//! Today: every host's CPU flags as a bit set over a dictionary of flag names
//! ([`CpuFlagIndex`]), so "does this host have all of these flags" is a few word
//! operations instead of string comparisons. A unit reads it through
//! [`Context::cpu_flags`](crate::Context::cpu_flags); it is `None` when the caller has no
//! index (unit tests with [`Context::new`](crate::Context::new)), and units fall back to
//! comparing names.

use crate::model::flags::CpuFlags;
use crate::model::{Host, HostIndex, Snapshot};
use crate::wire::sync::Change;
use alloc::string::String;
use alloc::vec::Vec;
use std::collections::HashMap;

/// Indexes derived from one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotIndex {
    /// Host CPU flags as bit sets.
    pub cpu_flags: CpuFlagIndex,
}

impl SnapshotIndex {
    /// Builds every index from a snapshot.
    pub fn build(snapshot: &Snapshot) -> Self {
        Self {
            cpu_flags: CpuFlagIndex::build(&snapshot.hosts),
        }
    }

    /// Brings the index up to date after `changes` were applied to `snapshot` (the
    /// snapshot after the changes): hosts replaced are re-read, hosts added or removed
    /// rebuild the index; other changes (pending, status, VMs) leave it as it is.
    pub fn update(&mut self, snapshot: &Snapshot, changes: &[Change]) {
        self.refresh(snapshot, &Touched::of(changes));
    }

    /// [`SnapshotIndex::update`] with what the changes touched, worked out before they
    /// were applied (applying consumes them).
    pub fn refresh(&mut self, snapshot: &Snapshot, touched: &Touched) {
        if touched.rebuild || self.cpu_flags.hosts != snapshot.hosts.len() {
            *self = Self::build(snapshot);
            return;
        }
        for &host in &touched.replaced {
            if let Some(h) = snapshot.hosts.get(host as usize) {
                if !self.cpu_flags.set_host(host as usize, h) {
                    *self = Self::build(snapshot);
                    return;
                }
            }
        }
    }
}

/// The hosts a batch of changes touched, as far as the indexes care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Hosts were added or removed: rebuild.
    pub rebuild: bool,
    /// Hosts replaced in place.
    pub replaced: Vec<HostIndex>,
}

impl Touched {
    /// What `changes` touch.
    pub fn of(changes: &[Change]) -> Self {
        let mut touched = Touched::default();
        for change in changes {
            match change {
                Change::AddHost(_) | Change::RemoveHost { .. } => touched.rebuild = true,
                Change::ReplaceHost { host, .. } => touched.replaced.push(*host),
                _ => {}
            }
        }
        touched
    }
}

/// Every host's CPU flags as a bit set over the flag names seen on any host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuFlagIndex {
    /// Flag name -> bit.
    bit_of: HashMap<String, u32>,
    /// 64-bit words per host.
    words: usize,
    /// Number of hosts indexed.
    hosts: usize,
    /// `hosts x words` bits.
    bits: Vec<u64>,
}

/// A set of required flags, resolved against a [`CpuFlagIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagMask {
    words: Vec<u64>,
    /// Some required flag is on no host at all: no host has them all.
    unknown: bool,
}

impl CpuFlagIndex {
    /// Indexes the flags of `hosts`.
    pub fn build(hosts: &[Host]) -> Self {
        let mut bit_of: HashMap<String, u32> = HashMap::new();
        // Hosts of a cluster mostly share a CPU model: a host whose flags equal an earlier
        // host's adds nothing to the dictionary and copies that host's row (a comparison of
        // names instead of hashing each of them).
        let mut seen: Vec<&CpuFlags> = Vec::new();
        for h in hosts {
            if seen.iter().any(|s| s.same_as(&h.cpu_flags)) {
                continue;
            }
            if seen.len() < 8 {
                seen.push(&h.cpu_flags);
            }
            for f in &h.cpu_flags {
                if !bit_of.contains_key(f) {
                    let next = bit_of.len() as u32;
                    bit_of.insert(f.clone(), next);
                }
            }
        }
        let words = bit_of.len().div_ceil(64).max(1);
        let mut index = Self {
            bit_of,
            words,
            hosts: hosts.len(),
            bits: alloc::vec![0; hosts.len() * words],
        };
        let words = index.words;
        // (flags, row) of recently indexed distinct flag lists.
        let mut recent: Vec<(&CpuFlags, usize)> = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            match recent.iter().find(|(f, _)| f.same_as(&h.cpu_flags)) {
                Some(&(_, row)) => index
                    .bits
                    .copy_within(row * words..(row + 1) * words, i * words),
                None => {
                    index.set_host(i, h);
                    if recent.len() == 8 {
                        recent.remove(0);
                    }
                    recent.push((&h.cpu_flags, i));
                }
            }
        }
        index
    }

    /// Re-reads one host's flags. `false` when it has a flag the dictionary lacks (the
    /// caller rebuilds).
    fn set_host(&mut self, i: usize, host: &Host) -> bool {
        let row = &mut self.bits[i * self.words..(i + 1) * self.words];
        row.fill(0);
        for f in &host.cpu_flags {
            match self.bit_of.get(f) {
                Some(&bit) => row[bit as usize / 64] |= 1 << (bit % 64),
                None => return false,
            }
        }
        true
    }

    /// Number of hosts indexed.
    pub fn host_count(&self) -> usize {
        self.hosts
    }

    /// Resolves required flag names.
    pub fn mask<'a>(&self, flags: impl IntoIterator<Item = &'a str>) -> FlagMask {
        let mut words = alloc::vec![0u64; self.words];
        let mut unknown = false;
        for f in flags {
            match self.bit_of.get(f) {
                Some(&bit) => words[bit as usize / 64] |= 1 << (bit % 64),
                None => unknown = true,
            }
        }
        FlagMask { words, unknown }
    }

    /// Whether host `host` has every flag of `mask` (false for a host not indexed).
    pub fn has_all(&self, host: HostIndex, mask: &FlagMask) -> bool {
        if mask.unknown {
            return false;
        }
        let start = host as usize * self.words;
        match self.bits.get(start..start + self.words) {
            Some(row) => row.iter().zip(&mask.words).all(|(h, m)| h & m == *m),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{host, snapshot};

    fn flags_of(index: &CpuFlagIndex, host: HostIndex, names: &[&str]) -> bool {
        index.has_all(host, &index.mask(names.iter().copied()))
    }

    #[test]
    fn hosts_have_all_flags_of_a_mask_or_not() {
        let s = snapshot()
            .host(host("a").cpu_flags(&["sse4_2", "avx2", "aes"]))
            .host(host("b").cpu_flags(&["sse4_2"]))
            .host(host("c"))
            .build();
        let index = SnapshotIndex::build(&s).cpu_flags;
        let cases: [(&[&str], [bool; 3]); 5] = [
            (&[], [true, true, true]),
            (&["sse4_2"], [true, true, false]),
            (&["aes", "avx2"], [true, false, false]),
            (&["avx512f"], [false, false, false]),
            (&["aes", "avx512f"], [false, false, false]),
        ];
        for (names, want) in cases {
            for (i, w) in want.iter().enumerate() {
                assert_eq!(
                    flags_of(&index, i as HostIndex, names),
                    *w,
                    "{names:?} host {i}"
                );
            }
        }
        assert!(!flags_of(&index, 7, &[]), "a host not indexed has nothing");
    }

    #[test]
    fn index_follows_host_changes_and_ignores_the_rest() {
        let mut s = snapshot()
            .host(host("a").cpu_flags(&["sse4_2"]))
            .host(host("b").cpu_flags(&["sse4_2"]))
            .build();
        let mut index = SnapshotIndex::build(&s);
        // A replaced host with a flag new to the dictionary (rebuild path) and one with a
        // known flag (row update path).
        let cases: [(Change, &[&str], [bool; 2]); 3] = [
            (
                Change::ReplaceHost {
                    host: 1,
                    value: host("b").cpu_flags(&["sse4_2", "avx2"]).build(),
                },
                &["avx2"],
                [false, true],
            ),
            (
                Change::ReplaceHost {
                    host: 0,
                    value: host("a").cpu_flags(&["avx2"]).build(),
                },
                &["avx2"],
                [true, true],
            ),
            (Change::SetTime { time_unix: 5 }, &["sse4_2"], [false, true]),
        ];
        for (change, names, want) in cases {
            change.clone().apply(&mut s).unwrap();
            index.update(&s, core::slice::from_ref(&change));
            assert_same_answers(&index, &SnapshotIndex::build(&s), &s);
            for (i, w) in want.iter().enumerate() {
                assert_eq!(
                    flags_of(&index.cpu_flags, i as HostIndex, names),
                    *w,
                    "{change:?}"
                );
            }
        }
        let add = Change::AddHost(host("c").cpu_flags(&["aes"]).build());
        add.clone().apply(&mut s).unwrap();
        index.update(&s, core::slice::from_ref(&add));
        assert!(flags_of(&index.cpu_flags, 2, &["aes"]));
        assert_eq!(index.cpu_flags.host_count(), 3);
    }

    /// An updated index answers like one built from scratch, for every host and flag.
    fn assert_same_answers(updated: &SnapshotIndex, fresh: &SnapshotIndex, s: &Snapshot) {
        let names: Vec<&str> = s
            .hosts
            .iter()
            .flat_map(|h| h.cpu_flags.iter().map(String::as_str))
            .collect();
        for h in 0..s.hosts.len() as HostIndex {
            for name in &names {
                let ask = |i: &SnapshotIndex| i.cpu_flags.has_all(h, &i.cpu_flags.mask([*name]));
                assert_eq!(ask(updated), ask(fresh), "host {h} flag {name}");
            }
        }
    }
}
