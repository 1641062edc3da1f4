//! A full snapshot on its way to guests: encoded once per epoch for every instance that
//! needs it, and for a large snapshot in parts that guests decode while the host encodes
//! the next ones (ABI 10: `FullBegin`, `FullHosts`..., `FullEnd`).

use policy_sdk::wire::codec;
use policy_sdk::wire::sync::{self, SyncMessageRef};
use policy_sdk::Snapshot;
use std::sync::{Arc, Condvar, Mutex};

/// Hosts from which a full snapshot is sent in parts, encoded on a thread of its own.
/// Below, one `Full` message is encoded at once: a thread would cost more than it saves.
const PARTS_FROM_HOSTS: usize = 4_096;

/// Hosts per part: small enough that a guest starts decoding soon after the encoding
/// starts, large enough that a part's own cost (a call, a whole CPU flag list) is noise.
const HOSTS_PER_PART: usize = 1_024;

/// The encoded messages that send one epoch's full snapshot: one `Full` message, or the
/// parts of a large snapshot. Parts become readable as they are encoded; every reader
/// sees all of them, in order.
#[derive(Debug, Default)]
pub(crate) struct FullSnapshot {
    made: Mutex<Made>,
    /// Signalled on every new part and at the end.
    ready: Condvar,
}

/// The parts encoded so far, and whether that is all of them.
#[derive(Debug, Default)]
struct Made {
    parts: Vec<Arc<Vec<u8>>>,
    done: bool,
}

impl FullSnapshot {
    /// Whether `snapshot` is sent in parts, encoded on a thread of its own while guests
    /// take the first ones.
    pub(crate) fn in_parts(snapshot: &Snapshot) -> bool {
        snapshot.hosts.len() >= PARTS_FROM_HOSTS
    }

    /// Encodes `snapshot`'s messages, each readable as soon as it is made. Readers see
    /// the end when this returns, or unwinds.
    pub(crate) fn encode(&self, snapshot: &Snapshot) {
        let _end = EndOfParts(self);
        if Self::in_parts(snapshot) {
            sync::encode_full_parts(snapshot, HOSTS_PER_PART, |part| self.push(part))
                .expect("a snapshot always encodes");
        } else {
            self.push(
                codec::encode(&SyncMessageRef::Full(snapshot)).expect("a snapshot always encodes"),
            );
        }
    }

    /// Message `i`, once it is encoded; `None` past the last.
    pub(crate) fn part(&self, i: usize) -> Option<Arc<Vec<u8>>> {
        let mut made = self.made.lock().unwrap();
        loop {
            if let Some(part) = made.parts.get(i) {
                return Some(part.clone());
            }
            if made.done {
                return None;
            }
            made = self.ready.wait(made).unwrap();
        }
    }

    fn push(&self, part: Vec<u8>) {
        self.made.lock().unwrap().parts.push(Arc::new(part));
        self.ready.notify_all();
    }

    fn end(&self) {
        self.made.lock().unwrap().done = true;
        self.ready.notify_all();
    }
}

/// Ends a [`FullSnapshot`]'s parts when dropped, so that its readers never wait for a
/// part an unwinding encoder will not make.
struct EndOfParts<'a>(&'a FullSnapshot);

impl Drop for EndOfParts<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testing::{host, snapshot};
    use policy_sdk::wire::sync::{decode_sync_into, PartsReceived, Received};

    fn of_hosts(n: usize) -> Snapshot {
        snapshot()
            .hosts((0..n).map(|i| host(&format!("h{i}")).cpu(1, 2, 2)))
            .build()
    }

    #[test]
    fn a_large_snapshot_goes_in_parts_a_reader_takes_while_they_are_encoded() {
        let large = of_hosts(PARTS_FROM_HOSTS + 5);
        let full = FullSnapshot::default();
        let mut held = of_hosts(3);
        std::thread::scope(|scope| {
            scope.spawn(|| full.encode(&large));
            let mut receiving = None;
            let mut i = 0;
            while let Some(part) = full.part(i) {
                match decode_sync_into(&part, &mut held).unwrap() {
                    Received::FullBegin { hosts } => receiving = Some(PartsReceived::begin(hosts)),
                    Received::FullHosts { first, count } => {
                        receiving.as_mut().unwrap().took(first, count).unwrap()
                    }
                    Received::FullEnd => receiving.take().unwrap().end().unwrap(),
                    other => panic!("{other:?}"),
                }
                i += 1;
            }
            assert_eq!(i, 2 + (PARTS_FROM_HOSTS + 5).div_ceil(HOSTS_PER_PART));
        });
        assert_eq!(held, large);
        // A second reader gets the same parts from the start.
        assert!(full.part(0).is_some() && full.part(99).is_none());
    }

    #[test]
    fn a_small_snapshot_is_one_full_message() {
        let small = of_hosts(PARTS_FROM_HOSTS - 1);
        let full = FullSnapshot::default();
        full.encode(&small);
        let mut held = Snapshot::default();
        assert_eq!(
            decode_sync_into(&full.part(0).unwrap(), &mut held),
            Ok(Received::Full)
        );
        assert_eq!((held, full.part(1)), (small, None));
    }

    #[test]
    fn readers_see_the_end_when_the_encoder_unwinds() {
        let full = FullSnapshot::default();
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| full.part(0));
            let encoder = scope.spawn(|| {
                let _end = EndOfParts(&full);
                panic!("encoder failed");
            });
            assert!(encoder.join().is_err());
            assert_eq!(reader.join().unwrap(), None);
        });
    }
}
