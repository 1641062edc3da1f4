//! What units return: filter verdicts, weight penalties, balance actions.
//!
//! Verdicts are data, not errors: a rejected host is a normal outcome with a reason.

use crate::model::{HostIndex, VmIndex};
use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// A filter unit's answer for one candidate host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The host may run the VM.
    Pass,
    /// The host may not run the VM.
    Reject {
        /// Stable machine-readable reason, e.g. `not_enough_memory`. Decisions group
        /// rejections by unit and code. A literal is kept borrowed: rejecting a host costs
        /// no allocation for its code.
        code: Cow<'static, str>,
        /// Human detail for this host, e.g. `1024 MiB free, 4096 MiB needed`.
        detail: String,
    },
}

impl Verdict {
    /// A rejection with a code (a `&'static str` literal, or a `String`) and a detail.
    pub fn reject(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Verdict::Reject {
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// True for [`Verdict::Pass`].
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
}

/// A weight unit's raw penalty for one host: lower is better. The engine, not the unit,
/// turns penalties into ranks or normalized scores and applies factors.
pub type Penalty = i64;

/// Power actions a balance unit may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// Move an empty host to maintenance.
    ToMaintenance,
    /// Power a host down.
    PowerDown,
    /// Activate a host in maintenance.
    Activate,
    /// Power a down host up.
    PowerUp,
}

impl PowerAction {
    /// The action's name in reports: `to_maintenance`, `power_down`, `activate`, `power_up`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::ToMaintenance => "to_maintenance",
            PowerAction::PowerDown => "power_down",
            PowerAction::Activate => "activate",
            PowerAction::PowerUp => "power_up",
        }
    }
}

/// An action proposed by a balance unit. The host enforces safety rules no unit can
/// override (migration modes, SPM and excluded hosts, actions per cycle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BalanceAction {
    /// Migrate a VM to one of the candidate hosts (the engine picks with the policy's
    /// filters and weights).
    Migrate {
        /// The VM to move.
        vm: VmIndex,
        /// Acceptable destinations.
        candidate_hosts: Vec<HostIndex>,
        /// Why.
        reason: String,
    },
    /// Change a host's power state.
    Power {
        /// The host.
        host: HostIndex,
        /// What to do.
        action: PowerAction,
        /// Why.
        reason: String,
    },
    /// Why nothing (or nothing more) is proposed this cycle, e.g. "no host is
    /// over-utilized". Not an action: the engine reports it in the plan so a cycle that does
    /// nothing says which rule decided so. (ABI version 4; older hosts do not know it.)
    Note {
        /// Why.
        reason: String,
    },
}

/// A filter's verdicts over its candidate list, as they cross the ABI: the number of
/// candidates and only the rejected ones (every other candidate passed), with each distinct
/// reject code sent once. A filter that passes 10,000 hosts answers with a few bytes.
///
/// On the wire (ABI 9) the rejections travel as columns: their positions and code indexes
/// as packed little-endian arrays, their details as a list that is empty when every detail
/// is (a summary decision's rejections), so a thousand rejections are two copies instead of
/// three thousand varints and a thousand empty strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdicts {
    /// Number of candidates judged.
    pub len: u32,
    /// Distinct reject codes; [`Rejection::code`] indexes this list.
    pub codes: Vec<String>,
    /// The rejected candidates, in strictly increasing position order.
    pub rejected: Vec<Rejection>,
    /// The last literal code pushed and its index (not sent: a filter rejects many hosts
    /// with the same literal, found again by its address without comparing bytes).
    last_literal: LastLiteral,
}

/// A literal code's address and length with its index in [`Verdicts::codes`]. Never part of
/// what two `Verdicts` are (equal whatever it holds).
#[derive(Debug, Clone, Copy, Default)]
struct LastLiteral(Option<(usize, usize, u32)>);

impl PartialEq for LastLiteral {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LastLiteral {}

/// The wire form of [`Verdicts`]: the rejections as columns.
#[derive(Deserialize)]
struct VerdictsWire {
    len: u32,
    codes: Vec<String>,
    #[serde(with = "packed::u32s")]
    positions: Vec<u32>,
    #[serde(with = "packed::u32s")]
    code_indexes: Vec<u32>,
    /// One per rejection, or none when every detail is empty.
    details: Vec<String>,
}

/// [`VerdictsWire`] borrowing from the [`Verdicts`] it sends (the same fields, types that
/// serialize alike).
#[derive(Serialize)]
struct VerdictsWireRef<'a> {
    len: u32,
    codes: &'a [String],
    #[serde(with = "packed::u32s")]
    positions: Vec<u32>,
    #[serde(with = "packed::u32s")]
    code_indexes: Vec<u32>,
    details: Vec<&'a str>,
}

impl Serialize for Verdicts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let with_details = self.rejected.iter().any(|r| !r.detail.is_empty());
        VerdictsWireRef {
            len: self.len,
            codes: &self.codes,
            positions: self.rejected.iter().map(|r| r.position).collect(),
            code_indexes: self.rejected.iter().map(|r| r.code).collect(),
            details: if with_details {
                self.rejected.iter().map(|r| r.detail.as_str()).collect()
            } else {
                Vec::new()
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Verdicts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = VerdictsWire::deserialize(d)?;
        Verdicts::from_columns(
            wire.len,
            wire.codes,
            wire.positions.iter().copied(),
            wire.code_indexes.iter().copied(),
            wire.details,
        )
        .map_err(serde::de::Error::custom)
    }
}

/// Most rejections one [`passing_scan`] records before it returns.
const SCAN_REJECTIONS: usize = 32;

/// Scans `candidates` from the first with `passes`, writing the positions of those it does
/// not pass into `failed`, in order, until the last candidate or until `failed` is full.
/// Returns how many candidates it scanned and how many of them it did not pass.
///
/// A function of its own, so that the loop has no call in it whatever the caller's loop
/// holds (in a wasm guest, values live across a call sit on the stack for the whole
/// function). It goes on past a rejection, so that its set-up (a wasm function's stack and
/// epoch checks, and loading what the loop keeps in registers) is paid once per
/// [`SCAN_REJECTIONS`] rejections rather than once per rejection: when hosts fill up in a
/// mass start, a filter turns away a large share of them.
#[inline(never)]
fn passing_scan(
    candidates: &[HostIndex],
    passes: &impl Fn(HostIndex) -> bool,
    failed: &mut [u32; SCAN_REJECTIONS],
) -> (usize, usize) {
    let mut pos = 0;
    let mut count = 0;
    while pos < candidates.len() {
        // Four at a time while all four pass.
        while let Some(four) = candidates.get(pos..pos + 4) {
            if !(passes(four[0]) && passes(four[1]) && passes(four[2]) && passes(four[3])) {
                break;
            }
            pos += 4;
        }
        // Then the four that did not all pass (or the last few) one by one.
        let end = (pos + 4).min(candidates.len());
        while pos < end {
            if !passes(candidates[pos]) {
                failed[count] = pos as u32;
                count += 1;
            }
            pos += 1;
            if count == SCAN_REJECTIONS {
                return (pos, count);
            }
        }
    }
    (pos, count)
}

impl Extend<Verdict> for Verdicts {
    fn extend<I: IntoIterator<Item = Verdict>>(&mut self, verdicts: I) {
        for v in verdicts {
            self.push(v);
        }
    }
}

/// One rejected candidate in [`Verdicts`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Position in the candidate list.
    pub position: u32,
    /// Index into [`Verdicts::codes`].
    pub code: u32,
    /// Human detail for this host.
    pub detail: String,
}

impl Verdicts {
    /// The verdicts of their wire columns (see `VerdictsWire`): a position and a code
    /// index per rejection, and a detail per rejection or none.
    fn from_columns(
        len: u32,
        codes: Vec<String>,
        positions: impl ExactSizeIterator<Item = u32>,
        code_indexes: impl ExactSizeIterator<Item = u32>,
        details: Vec<String>,
    ) -> Result<Self, String> {
        let n = positions.len();
        if code_indexes.len() != n || !(details.is_empty() || details.len() == n) {
            return Err(alloc::format!(
                "verdicts: {n} rejected positions, {} code indexes and {} details \
                 (details must be none or one per rejection)",
                code_indexes.len(),
                details.len()
            ));
        }
        let mut details = details.into_iter();
        let rejected = positions
            .zip(code_indexes)
            .map(|(position, code)| Rejection {
                position,
                code,
                detail: details.next().unwrap_or_default(),
            })
            .collect();
        Ok(Verdicts {
            len,
            codes,
            rejected,
            last_literal: LastLiteral::default(),
        })
    }

    /// Appends the verdicts' wire form by hand: the bytes their serde form gives
    /// (`VerdictsWireRef`), without building its columns first.
    pub(crate) fn put_wire(&self, out: &mut Vec<u8>) {
        use crate::wire::codec::raw;
        raw::put_u64(out, u64::from(self.len));
        raw::put_len(out, self.codes.len());
        for code in &self.codes {
            raw::put_str(out, code);
        }
        packed::u32s::put_each(out, self.rejected.iter().map(|r| r.position));
        packed::u32s::put_each(out, self.rejected.iter().map(|r| r.code));
        if self.rejected.iter().any(|r| !r.detail.is_empty()) {
            raw::put_len(out, self.rejected.len());
            for r in &self.rejected {
                raw::put_str(out, &r.detail);
            }
        } else {
            raw::put_len(out, 0);
        }
    }

    /// Reads the wire form by hand; `None` for anything the serde form would not take
    /// as it is (see [`raw::Reader`](crate::wire::codec::raw::Reader)).
    pub(crate) fn read_wire(reader: &mut crate::wire::codec::raw::Reader<'_>) -> Option<Self> {
        let len = reader.u32()?;
        let codes = (0..reader.length()?)
            .map(|_| reader.string())
            .collect::<Option<Vec<String>>>()?;
        let positions = packed::u32s::values(reader.bytes()?)?;
        let code_indexes = packed::u32s::values(reader.bytes()?)?;
        let details = (0..reader.length()?)
            .map(|_| reader.string())
            .collect::<Option<Vec<String>>>()?;
        Verdicts::from_columns(len, codes, positions, code_indexes, details).ok()
    }

    /// Every one of `len` candidates passed.
    pub fn passing(len: u32) -> Self {
        Verdicts {
            len,
            ..Verdicts::default()
        }
    }

    /// Compacts one verdict per candidate (moving the details, not copying them).
    pub fn from_verdicts(verdicts: Vec<Verdict>) -> Self {
        let mut out = Verdicts::default();
        out.extend(verdicts);
        out
    }

    /// Appends the verdict of the next candidate: a pass only counts it; a rejection is
    /// recorded with its code (each distinct code stored once).
    ///
    /// The pass, what nearly every candidate gets, is inlined into the unit's loop (a
    /// count); the rejection is a call.
    #[inline(always)]
    pub fn push(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Pass => self.len += 1,
            Verdict::Reject { code, detail } => self.push_rejection(code, detail),
        }
    }

    /// Judges `candidates` at two speeds: `passes`, a check with no call in it, runs in a
    /// tight loop and passes most hosts; a host it does not pass gets `verdict`, the full
    /// check (which may count, call and write a rejection). `passes` must never pass a host
    /// that `verdict` would reject. `verdict` is asked about those hosts in their order, but
    /// `passes` may have looked at later hosts first (it scans on past a rejection), so
    /// neither may count on the other's side effects for another host.
    ///
    /// In a wasm guest a loop with a call anywhere in it keeps its values on the stack
    /// (every register is the caller's to save); the tight loop keeps them in registers.
    #[inline(always)]
    pub fn judge(
        &mut self,
        candidates: &[HostIndex],
        passes: impl Fn(HostIndex) -> bool,
        mut verdict: impl FnMut(HostIndex) -> Verdict,
    ) {
        let mut failed = [0; SCAN_REJECTIONS];
        let mut rest = candidates;
        while !rest.is_empty() {
            let (scanned, count) = passing_scan(rest, &passes, &mut failed);
            let start = self.len;
            for &position in &failed[..count] {
                // The candidates before it passed.
                self.len = start + position;
                self.push(verdict(rest[position as usize]));
            }
            self.len = start + scanned as u32;
            rest = &rest[scanned..];
        }
    }

    #[inline(never)]
    fn push_rejection(&mut self, code: Cow<'static, str>, detail: String) {
        let literal = match &code {
            Cow::Borrowed(text) => Some((text.as_ptr() as usize, text.len())),
            Cow::Owned(_) => None,
        };
        let index = match (self.last_literal.0, literal) {
            (Some((address, len, index)), Some(seen)) if (address, len) == seen => index,
            _ => {
                let index = match self.codes.iter().position(|c| **c == *code) {
                    Some(i) => i,
                    None => {
                        self.codes.push(code.into_owned());
                        self.codes.len() - 1
                    }
                } as u32;
                if let Some((address, len)) = literal {
                    self.last_literal = LastLiteral(Some((address, len, index)));
                }
                index
            }
        };
        self.rejected.push(Rejection {
            position: self.len,
            code: index,
            detail,
        });
        self.len += 1;
    }

    /// Number of candidates judged.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no candidate was judged.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every candidate passed.
    pub fn all_pass(&self) -> bool {
        self.rejected.is_empty()
    }

    /// The code of a rejection.
    pub fn code_of(&self, rejection: &Rejection) -> &str {
        self.codes
            .get(rejection.code as usize)
            .map_or("", String::as_str)
    }

    /// Checks what a guest could get wrong: positions in range and strictly increasing,
    /// code indices in range. The message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let mut next = 0u32;
        for r in &self.rejected {
            if r.position < next || r.position >= self.len {
                return Err(alloc::format!(
                    "rejected position {} out of order or range (candidates: {})",
                    r.position,
                    self.len
                ));
            }
            if r.code as usize >= self.codes.len() {
                return Err(alloc::format!(
                    "reject code index {} out of range ({} codes)",
                    r.code,
                    self.codes.len()
                ));
            }
            next = r.position + 1;
        }
        Ok(())
    }

    /// One verdict per candidate (for tests and callers that want the long form).
    pub fn into_verdicts(self) -> Vec<Verdict> {
        let mut out: Vec<Verdict> = (0..self.len).map(|_| Verdict::Pass).collect();
        for r in self.rejected {
            let code = self.codes.get(r.code as usize).cloned().unwrap_or_default();
            if let Some(slot) = out.get_mut(r.position as usize) {
                *slot = Verdict::Reject {
                    code: Cow::Owned(code),
                    detail: r.detail,
                };
            }
        }
        out
    }
}

/// Serde adapters that send integer arrays as packed little-endian bytes (one length, then
/// a memcpy) instead of one variable-length integer per element: candidate lists and
/// penalties are the large arrays of every call.
pub mod packed {
    use alloc::vec::Vec;
    use core::fmt;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    macro_rules! packed_array {
        ($module:ident, $ty:ty, $size:literal) => {
            /// Packed little-endian array of this element type.
            pub mod $module {
                use super::*;

                /// The values' little-endian bytes: their own memory on a little-endian
                /// machine, a copy elsewhere.
                fn le_bytes(values: &[$ty]) -> alloc::borrow::Cow<'_, [u8]> {
                    #[cfg(target_endian = "little")]
                    {
                        // SAFETY: a plain integer slice (no padding) viewed as the bytes it
                        // covers, for as long as `values` is borrowed.
                        alloc::borrow::Cow::Borrowed(unsafe {
                            core::slice::from_raw_parts(
                                values.as_ptr().cast::<u8>(),
                                core::mem::size_of_val(values),
                            )
                        })
                    }
                    #[cfg(not(target_endian = "little"))]
                    {
                        let mut bytes = Vec::with_capacity(values.len() * $size);
                        for v in values {
                            bytes.extend_from_slice(&v.to_le_bytes());
                        }
                        alloc::borrow::Cow::Owned(bytes)
                    }
                }

                /// Serializes as packed bytes.
                pub fn serialize<S: Serializer>(values: &[$ty], s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(&le_bytes(values))
                }

                /// Appends what [`serialize`] writes, by hand (see
                /// [`raw`](crate::wire::codec::raw)): one copy of the values' bytes.
                pub fn put(out: &mut Vec<u8>, values: &[$ty]) {
                    let bytes = le_bytes(values);
                    crate::wire::codec::raw::put_len(out, bytes.len());
                    out.extend_from_slice(&bytes);
                }

                /// Appends what [`serialize`] writes of `values` given one by one (a
                /// column of a list of structs): room made once, each value a store of its
                /// bytes (a push per byte checks the room and, in a guest, copies through a
                /// call).
                pub fn put_each(out: &mut Vec<u8>, values: impl ExactSizeIterator<Item = $ty>) {
                    let len = values.len() * $size;
                    crate::wire::codec::raw::put_len(out, len);
                    let start = out.len();
                    out.resize(start + len, 0);
                    for (slot, v) in out[start..].chunks_exact_mut($size).zip(values) {
                        slot.copy_from_slice(&v.to_le_bytes());
                    }
                }

                /// The values of packed bytes, one by one; `None` when the bytes are not
                /// a whole number of values.
                pub fn values(bytes: &[u8]) -> Option<impl ExactSizeIterator<Item = $ty> + '_> {
                    (bytes.len() % $size == 0).then(|| {
                        bytes
                            .chunks_exact($size)
                            .map(|c| <$ty>::from_le_bytes(c.try_into().expect("an exact chunk")))
                    })
                }

                /// The values of packed bytes (one copy on a little-endian machine);
                /// `None` when the bytes are not a whole number of values.
                pub fn from_le_bytes(bytes: &[u8]) -> Option<Vec<$ty>> {
                    #[cfg(target_endian = "little")]
                    {
                        if bytes.len() % $size != 0 {
                            return None;
                        }
                        let n = bytes.len() / $size;
                        let mut values: Vec<$ty> = Vec::with_capacity(n);
                        // SAFETY: `n` values of capacity are written in full by the copy
                        // of exactly `n * size` bytes (their little-endian form), then
                        // become the vector's length.
                        unsafe {
                            core::ptr::copy_nonoverlapping(
                                bytes.as_ptr(),
                                values.as_mut_ptr().cast::<u8>(),
                                n * $size,
                            );
                            values.set_len(n);
                        }
                        Some(values)
                    }
                    #[cfg(not(target_endian = "little"))]
                    {
                        values(bytes).map(Iterator::collect)
                    }
                }

                /// Deserializes packed bytes.
                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<$ty>, D::Error> {
                    struct V;
                    impl<'de> Visitor<'de> for V {
                        type Value = Vec<$ty>;
                        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                            f.write_str(concat!("packed ", stringify!($ty), " bytes"))
                        }
                        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
                            from_le_bytes(bytes).ok_or_else(|| {
                                E::custom(alloc::format!(
                                    "{} bytes is not a whole number of {}-byte values",
                                    bytes.len(),
                                    $size
                                ))
                            })
                        }
                        fn visit_borrowed_bytes<E: Error>(
                            self,
                            bytes: &'de [u8],
                        ) -> Result<Self::Value, E> {
                            self.visit_bytes(bytes)
                        }
                        fn visit_byte_buf<E: Error>(
                            self,
                            bytes: Vec<u8>,
                        ) -> Result<Self::Value, E> {
                            self.visit_bytes(&bytes)
                        }
                        fn visit_seq<A: SeqAccess<'de>>(
                            self,
                            mut seq: A,
                        ) -> Result<Self::Value, A::Error> {
                            // Self-describing formats (JSON) give the bytes as a list.
                            let mut bytes = Vec::new();
                            while let Some(b) = seq.next_element::<u8>()? {
                                bytes.push(b);
                            }
                            self.visit_bytes(&bytes)
                        }
                    }
                    d.deserialize_bytes(V)
                }
            }
        };
    }

    packed_array!(u32s, u32, 4);
    packed_array!(i64s, i64, 8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::abi::{CallRequest, CallResponse};
    use crate::wire::codec;

    /// `judge` gives the verdicts of pushing `verdict` for every host (runs of passes
    /// counted, rejections where `verdict` rejects) and asks `verdict` about exactly the
    /// hosts `passes` does not pass, in order: over lists of every length around the fast
    /// loop's steps of four, with hosts the fast check leaves to the full one, rejected
    /// or not, and with more rejections than one scan records.
    #[test]
    fn judge_gives_the_verdicts_of_the_full_check_and_asks_it_only_about_the_rest() {
        // Per host: does the fast check pass it, and what does the full check say.
        #[derive(Clone, Copy)]
        enum Host {
            Fast,
            SlowPass,
            SlowReject,
        }
        use Host::*;
        let pattern = |case: &'static str, hosts: &[Host]| (case, hosts.to_vec());
        let mut patterns = alloc::vec![
            pattern("none", &[]),
            pattern("all fast, fewer than four", &[Fast, Fast, Fast]),
            pattern("all fast, nine", &[Fast; 9]),
            pattern("first rejected", &[SlowReject, Fast, Fast, Fast, Fast]),
            pattern("fourth rejected", &[Fast, Fast, Fast, SlowReject, Fast]),
            pattern("fifth rejected", &[Fast, Fast, Fast, Fast, SlowReject]),
            pattern(
                "last of nine",
                &[Fast, Fast, Fast, Fast, Fast, Fast, Fast, Fast, SlowReject],
            ),
            pattern(
                "slow passes between",
                &[Fast, SlowPass, Fast, Fast, Fast, Fast, SlowPass, SlowReject],
            ),
            pattern(
                "every one slow",
                &[SlowReject, SlowPass, SlowReject, SlowPass, SlowReject],
            ),
        ];
        // More rejections than one scan records (`SCAN_REJECTIONS`): the scan stops when it
        // is full and the next one goes on from the candidate after the last it scanned.
        let rejected_run = |n: usize| core::iter::repeat_n(SlowReject, n);
        let full_scan = SCAN_REJECTIONS;
        patterns.extend([
            ("a scan's worth rejected", rejected_run(full_scan).collect()),
            (
                "a scan's worth and one rejected",
                rejected_run(full_scan + 1).collect(),
            ),
            (
                "three scans' worth among passes",
                (0..3 * full_scan + 5)
                    .flat_map(|k| match k % 3 {
                        0 => alloc::vec![SlowReject, Fast],
                        1 => alloc::vec![SlowPass, SlowReject, Fast, Fast, Fast, Fast],
                        _ => alloc::vec![Fast, SlowReject],
                    })
                    .collect(),
            ),
            (
                "a scan fills on the last candidate",
                core::iter::repeat_n(Fast, 7)
                    .chain(rejected_run(full_scan))
                    .collect(),
            ),
            (
                "a scan fills inside a four",
                rejected_run(full_scan - 1)
                    .chain([Fast, SlowReject, Fast, Fast])
                    .chain(core::iter::repeat_n(Fast, 9))
                    .collect(),
            ),
        ]);
        for (case, hosts) in &patterns {
            let candidates: Vec<HostIndex> = (0..hosts.len() as HostIndex).map(|i| i * 3).collect();
            let host = |i: HostIndex| hosts[(i / 3) as usize];
            let full = |i: HostIndex| match host(i) {
                Fast | SlowPass => Verdict::Pass,
                SlowReject => Verdict::reject("no", alloc::format!("host {i}")),
            };
            let mut asked = Vec::new();
            let mut judged = Verdicts::default();
            judged.judge(
                &candidates,
                |i| matches!(host(i), Fast),
                |i| {
                    asked.push(i);
                    full(i)
                },
            );
            let pushed = Verdicts::from_verdicts(candidates.iter().map(|&i| full(i)).collect());
            assert_eq!(judged, pushed, "{case}");
            let slow: Vec<HostIndex> = candidates
                .iter()
                .copied()
                .filter(|&i| !matches!(host(i), Fast))
                .collect();
            assert_eq!(asked, slow, "{case}");
        }
    }

    /// Verdicts cross the wire as columns (ABI 9) and come back equal, details or not; a
    /// summary's rejections cost their packed position and code index only; columns of
    /// different lengths are refused, naming the lengths.
    #[test]
    fn verdicts_cross_as_columns_with_details_only_when_a_rejection_has_one() {
        let rejections = |n: u32, detail: &str| -> Verdicts {
            Verdicts::from_verdicts(
                (0..2 * n)
                    .map(|i| match i % 2 {
                        0 => Verdict::Pass,
                        _ => Verdict::reject(if i % 4 == 1 { "full" } else { "off" }, detail),
                    })
                    .collect(),
            )
        };
        let cases = [
            ("nothing rejected", Verdicts::passing(7)),
            ("summary", rejections(100, "")),
            ("full", rejections(100, "no room")),
            ("one detail among empty ones", {
                let mut v = rejections(3, "");
                v.rejected[1].detail = "only this one".into();
                v
            }),
        ];
        for (case, verdicts) in cases {
            let bytes = codec::encode(&verdicts).unwrap();
            assert_eq!(
                codec::decode::<Verdicts>(&bytes).unwrap(),
                verdicts,
                "{case}"
            );
        }
        let summary = codec::encode(&rejections(100, "")).unwrap();
        let empty = codec::encode(&Verdicts::passing(200)).unwrap();
        assert!(
            // Two codes with their lengths, two column lengths, 8 bytes per rejection.
            summary.len() <= empty.len() + 20 + 100 * 8,
            "{} bytes for 100 rejections",
            summary.len()
        );
        let ragged = VerdictsWireRef {
            len: 4,
            codes: &["full".into()],
            positions: alloc::vec![0, 2],
            code_indexes: alloc::vec![0],
            details: Vec::new(),
        };
        let err = codec::decode::<Verdicts>(&codec::encode(&ragged).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("2 rejected positions, 1 code indexes and 0 details"),
            "{err}"
        );
    }

    /// A literal code seen just before is found by its address; the same text from another
    /// literal, or owned, is found by comparing it; either way each code is stored once and
    /// the result equals (and encodes as) the verdicts built from owned codes only.
    #[test]
    fn codes_are_stored_once_whether_literal_borrowed_or_owned() {
        let same_text_elsewhere: &'static str = alloc::string::String::from("full").leak();
        let verdicts = alloc::vec![
            Verdict::reject("full", ""),
            Verdict::reject("full", ""),
            Verdict::Pass,
            Verdict::reject("offline", ""),
            Verdict::reject(alloc::string::String::from("full"), ""),
            Verdict::reject(same_text_elsewhere, ""),
            Verdict::reject("full", ""),
            Verdict::reject("offline", ""),
        ];
        let owned: Vec<Verdict> = verdicts
            .iter()
            .map(|v| match v {
                Verdict::Pass => Verdict::Pass,
                Verdict::Reject { code, detail } => {
                    Verdict::reject(code.to_string(), detail.clone())
                }
            })
            .collect();
        let compact = Verdicts::from_verdicts(verdicts);
        assert_eq!(compact.codes, ["full", "offline"]);
        let codes: Vec<u32> = compact.rejected.iter().map(|r| r.code).collect();
        assert_eq!(codes, [0, 0, 1, 0, 0, 0, 1]);
        let from_owned = Verdicts::from_verdicts(owned);
        assert_eq!(compact, from_owned);
        assert_eq!(
            codec::encode(&compact).unwrap(),
            codec::encode(&from_owned).unwrap()
        );
    }

    #[test]
    fn verdicts_keep_only_rejections_with_each_code_once() {
        let long = alloc::vec![
            Verdict::Pass,
            Verdict::reject("no_room", "1 MiB"),
            Verdict::Pass,
            Verdict::reject("offline", "pCPU 3"),
            Verdict::reject("no_room", "2 MiB"),
        ];
        let compact = Verdicts::from_verdicts(long.clone());
        assert_eq!(compact.len(), 5);
        assert_eq!(compact.codes, ["no_room", "offline"]);
        let positions: Vec<(u32, u32)> = compact
            .rejected
            .iter()
            .map(|r| (r.position, r.code))
            .collect();
        assert_eq!(positions, [(1, 0), (3, 1), (4, 0)]);
        assert!(compact.check().is_ok());
        assert_eq!(compact.into_verdicts(), long);
        assert!(Verdicts::from_verdicts(alloc::vec![Verdict::Pass; 3]).all_pass());
    }

    #[test]
    fn malformed_verdicts_are_caught_naming_the_problem() {
        let reject = |position, code| Rejection {
            position,
            code,
            detail: String::new(),
        };
        let cases = [
            (
                alloc::vec![reject(5, 0)],
                "rejected position 5 out of order or range",
            ),
            (
                alloc::vec![reject(2, 0), reject(1, 0)],
                "rejected position 1 out of order",
            ),
            (
                alloc::vec![reject(1, 0), reject(1, 0)],
                "rejected position 1 out of order",
            ),
            (
                alloc::vec![reject(0, 1)],
                "reject code index 1 out of range (1 codes)",
            ),
        ];
        for (rejected, want) in cases {
            let v = Verdicts {
                len: 3,
                codes: alloc::vec!["c".into()],
                rejected,
                ..Verdicts::default()
            };
            let err = v.check().unwrap_err();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn packed_arrays_round_trip_and_refuse_ragged_bytes() {
        let request = CallRequest {
            unit: 1,
            epoch: 2,
            params: alloc::vec![],
            vm: None,
            candidates: (0..10_000).chain([u32::MAX]).collect(),
            details: true,
        };
        let bytes = codec::encode(&request).unwrap();
        // 10,001 x 4 bytes plus a few header bytes: no per-element varints.
        assert!(bytes.len() < 10_001 * 4 + 16, "{}", bytes.len());
        assert_eq!(codec::decode::<CallRequest>(&bytes).unwrap(), request);
        let penalties = CallResponse::Penalties(alloc::vec![i64::MIN, -1, 0, 1, i64::MAX]);
        let bytes = codec::encode(&penalties).unwrap();
        assert_eq!(codec::decode::<CallResponse>(&bytes).unwrap(), penalties);
        // Variant 1 (penalties), 3 bytes: not a whole number of i64s.
        let err = codec::decode::<CallResponse>(&[1, 3, 0, 0, 0]).unwrap_err();
        assert!(
            err.0
                .contains("3 bytes is not a whole number of 8-byte values"),
            "{err}"
        );
    }
}
