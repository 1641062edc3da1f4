//! Selectors: how the weights' raw penalties become one total per host (rank, normalized
//! sum, raw sum, each times the unit's factor) and how the best host is picked
//! (deterministic tie-break by host id). Units return raw values; the arithmetic is here.

use super::policy::{PolicyUnit, SelectorKind};
use policy_sdk::{HostIndex, Penalty};

/// Per-host totals and per-unit contributions (indexed `[unit][candidate]`).
pub(super) fn select(
    selector: SelectorKind,
    columns: &[(&PolicyUnit, Vec<Penalty>)],
    candidates: usize,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut totals = vec![0.0; candidates];
    let mut contributions = Vec::with_capacity(columns.len());
    for (unit, penalties) in columns {
        let factor = unit.factor as f64;
        let column: Vec<f64> = match selector {
            SelectorKind::Rank => ranks(penalties)
                .into_iter()
                .map(|r| r as f64 * factor)
                .collect(),
            SelectorKind::NormalizedSum => {
                let min = penalties.iter().copied().min().unwrap_or(0);
                let max = penalties.iter().copied().max().unwrap_or(0);
                let span = (max as i128 - min as i128) as f64;
                penalties
                    .iter()
                    .map(|&p| {
                        if span > 0.0 {
                            (p as i128 - min as i128) as f64 / span * factor
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
            SelectorKind::RawSum => penalties.iter().map(|&p| p as f64 * factor).collect(),
        };
        for (t, c) in totals.iter_mut().zip(&column) {
            *t += c;
        }
        contributions.push(column);
    }
    (totals, contributions)
}

/// Rank of each penalty: the number of candidates with a strictly worse (higher) penalty,
/// so the best of n distinct penalties gets n-1 and ties share a rank.
pub(super) fn ranks(penalties: &[Penalty]) -> Vec<usize> {
    let n = penalties.len();
    let (Some(&min), Some(&max)) = (penalties.iter().min(), penalties.iter().max()) else {
        return Vec::new();
    };
    // A unit that scores every host alike (common: a VM the unit does not apply to) ranks
    // them all 0.
    if min == max {
        return vec![0; n];
    }
    let span = (max as i128 - min as i128) as u128;
    if span <= 4 * n as u128 {
        // Few distinct values (loads in percent, 1/1000 scores): count each value, then
        // the rank of a value is the number of penalties above it. No sort.
        let mut above = vec![0usize; span as usize + 2];
        for &p in penalties {
            above[(p as i128 - min as i128) as usize] += 1;
        }
        let mut worse = 0;
        for slot in above.iter_mut().rev() {
            let here = *slot;
            *slot = worse;
            worse += here;
        }
        return penalties
            .iter()
            .map(|&p| above[(p as i128 - min as i128) as usize])
            .collect();
    }
    let mut sorted: Vec<Penalty> = penalties.to_vec();
    sorted.sort_unstable();
    penalties
        .iter()
        .map(|p| sorted.len() - sorted.partition_point(|x| x <= p))
        .collect()
}

/// Orders two selector totals best first (`Less` = `a` is better): higher wins for the
/// rank selector, lower for the sums.
pub(super) fn compare_totals(selector: SelectorKind, a: f64, b: f64) -> std::cmp::Ordering {
    if selector == SelectorKind::Rank {
        b.total_cmp(&a)
    } else {
        a.total_cmp(&b)
    }
}

pub(super) fn pick_best(
    selector: SelectorKind,
    totals: &[f64],
    survivors: &[HostIndex],
    snapshot: &policy_sdk::Snapshot,
) -> Option<HostIndex> {
    let mut best: Option<(usize, f64)> = None;
    for (pos, &total) in totals.iter().enumerate() {
        let better = match best {
            None => true,
            Some((b, bt)) => {
                let ord = compare_totals(selector, total, bt);
                ord.is_lt()
                    || (ord.is_eq()
                        && snapshot.hosts[survivors[pos] as usize].id
                            < snapshot.hosts[survivors[b] as usize].id)
            }
        };
        if better {
            best = Some((pos, total));
        }
    }
    best.map(|(pos, _)| survivors[pos])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_give_best_n_minus_one_and_ties_share() {
        let cases: &[(&[Penalty], &[usize])] = &[
            (&[10, 20, 30], &[2, 1, 0]),
            (&[5, 5, 9], &[1, 1, 0]),
            (&[7, 7, 7], &[0, 0, 0]),
            (&[-3, 100, 0], &[2, 0, 1]),
            (&[], &[]),
        ];
        for (penalties, expected) in cases {
            assert_eq!(&ranks(penalties), expected, "penalties {penalties:?}");
        }
    }

    /// The counting path (few distinct values) and the sorting path (wide values) agree
    /// with the definition: the number of strictly worse penalties.
    #[test]
    fn ranks_count_strictly_worse_penalties_on_both_paths() {
        let mut rng = policy_sdk::testing::XorShift::new(3);
        for case in 0..300 {
            let n = 1 + rng.below(60) as usize;
            let wide = case % 2 == 0;
            let penalties: Vec<Penalty> = (0..n)
                .map(|_| {
                    if wide {
                        rng.below(u64::MAX / 2) as i64 - (1 << 60)
                    } else {
                        rng.below(8) as i64 - 3
                    }
                })
                .collect();
            let want: Vec<usize> = penalties
                .iter()
                .map(|p| penalties.iter().filter(|q| *q > p).count())
                .collect();
            assert_eq!(ranks(&penalties), want, "case {case}: {penalties:?}");
        }
        assert_eq!(ranks(&[i64::MIN, i64::MAX]), [1, 0]);
    }
}
