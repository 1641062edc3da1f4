//! Selectors: how the weights' raw penalties become one total per host (rank, normalized
//! sum, raw sum, each times the unit's factor) and how the best host is picked
//! (deterministic tie-break by host id). Units return raw values; the arithmetic is here.

use super::policy::{PolicyUnit, SelectorKind};
use super::scheduler::{on_chunks, split_parts};
use policy_sdk::{HostIndex, Penalty};

/// What a selector made of the weights' penalties over the candidates.
#[derive(Debug, Clone, Default)]
pub(super) struct Selection {
    /// Per candidate, the sum of every unit's contribution.
    pub(super) totals: Vec<f64>,
    /// Per unit (`[unit][candidate]`), the points the selector gave the raw penalty before
    /// the factor: the rank (rank selector), the penalty scaled to 0..=1 (normalized sum)
    /// or the raw penalty (raw sum). A contribution is points x factor.
    pub(super) points: Vec<Vec<f64>>,
}

impl Selection {
    /// The contribution of unit `column` (factor `factor`) to candidate `pos`'s total.
    pub(super) fn contribution(&self, column: usize, factor: i64, pos: usize) -> f64 {
        self.points[column][pos] * factor as f64
    }
}

/// The (factor, penalties) of each weight column, as [`select`] takes them.
pub(super) fn factored<'a>(
    columns: &'a [(&PolicyUnit, Vec<Penalty>)],
) -> impl Iterator<Item = (i64, &'a [Penalty])> {
    columns
        .iter()
        .map(|(unit, penalties)| (unit.factor, penalties.as_slice()))
}

/// Turns each unit's penalty column into points, multiplies them by the unit's factor and
/// sums them per candidate. A decision large enough to be split across cores (see
/// `split_parts`) works out the columns' points on as many threads, and a wide column's
/// ranks are themselves sorted in parts (see [`ranks`]): one column of free memory in MiB
/// can be most of the work. The totals are summed in column order either way, so they are
/// the same to the bit.
pub(super) fn select<'a>(
    selector: SelectorKind,
    columns: impl IntoIterator<Item = (i64, &'a [Penalty])>,
    candidates: usize,
) -> Selection {
    let columns: Vec<(i64, &[Penalty])> = columns.into_iter().collect();
    // Contiguous runs of columns, one per thread (one run, on this thread, unless the
    // decision is split), put back end to end.
    let threads = split_parts(candidates).clamp(1, columns.len().max(1));
    let points: Vec<Vec<f64>> = on_chunks(&columns, columns.len().div_ceil(threads), |run| {
        run.iter()
            .map(|&(_, penalties)| points_of(selector, penalties))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let mut totals = vec![0.0; candidates];
    for (&(factor, _), points) in columns.iter().zip(&points) {
        let factor = factor as f64;
        for (t, p) in totals.iter_mut().zip(points) {
            *t += p * factor;
        }
    }
    Selection { totals, points }
}

/// The points the selector gives each penalty of one column (before the factor).
fn points_of(selector: SelectorKind, penalties: &[Penalty]) -> Vec<f64> {
    match selector {
        SelectorKind::Rank => ranks(penalties).into_iter().map(|r| r as f64).collect(),
        SelectorKind::NormalizedSum => {
            let min = penalties.iter().copied().min().unwrap_or(0);
            let max = penalties.iter().copied().max().unwrap_or(0);
            let span = (max as i128 - min as i128) as f64;
            penalties
                .iter()
                .map(|&p| {
                    if span > 0.0 {
                        (p as i128 - min as i128) as f64 / span
                    } else {
                        0.0
                    }
                })
                .collect()
        }
        SelectorKind::RawSum => penalties.iter().map(|&p| p as f64).collect(),
    }
}

/// Rank of each penalty: the number of candidates with a strictly worse (higher) penalty,
/// so the best of n distinct penalties gets n-1 and ties share a rank. A column as long as
/// a split decision's (see `split_parts`) that needs sorting is sorted and ranked on as
/// many threads.
pub(super) fn ranks(penalties: &[Penalty]) -> Vec<usize> {
    ranks_in_parts(penalties, split_parts(penalties.len()))
}

/// [`ranks`] with a sort's work in `parts` contiguous runs of the column, each on its own
/// thread (one part: all on this one): the runs sorted apart and merged, then each run's
/// penalties looked up in the merged order. The ranks are the same for any `parts`.
fn ranks_in_parts(penalties: &[Penalty], parts: usize) -> Vec<usize> {
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
    let run = n.div_ceil(parts.max(1));
    let sorted = merged(on_chunks(penalties, run, |part| {
        let mut sorted = part.to_vec();
        sorted.sort_unstable();
        sorted
    }));
    let rank = |p: &Penalty| sorted.len() - sorted.partition_point(|x| x <= p);
    let mut ranked = on_chunks(penalties, run, |part| {
        part.iter().map(rank).collect::<Vec<usize>>()
    });
    if ranked.len() == 1 {
        return ranked.pop().unwrap_or_default();
    }
    ranked.concat()
}

/// Sorted runs merged into one sorted list (a single run is returned as it is).
fn merged(mut runs: Vec<Vec<Penalty>>) -> Vec<Penalty> {
    while runs.len() > 1 {
        let right = runs.pop().unwrap_or_default();
        let left = runs.pop().unwrap_or_default();
        let mut both = Vec::with_capacity(left.len() + right.len());
        let (mut l, mut r) = (left.iter().peekable(), right.iter().peekable());
        while let (Some(&&a), Some(&&b)) = (l.peek(), r.peek()) {
            if a <= b {
                both.push(a);
                l.next();
            } else {
                both.push(b);
                r.next();
            }
        }
        both.extend(l);
        both.extend(r);
        runs.push(both);
    }
    runs.pop().unwrap_or_default()
}

/// The positions `0..n` of the `keep` best candidates, best first, by `better` (a total
/// order: totals, then host ids). A decision large enough to be split across cores (see
/// `split_parts`) picks each part's best on a thread of its own and then the best of
/// those: the best `keep` of all are among the best `keep` of each part.
pub(super) fn best_first(
    n: usize,
    keep: usize,
    better: impl Fn(&usize, &usize) -> std::cmp::Ordering + Sync,
) -> Vec<usize> {
    best_first_in_parts(n, keep, split_parts(n), better)
}

fn best_first_in_parts(
    n: usize,
    keep: usize,
    parts: usize,
    better: impl Fn(&usize, &usize) -> std::cmp::Ordering + Sync,
) -> Vec<usize> {
    let best_of = |mut order: Vec<usize>| {
        if keep == 0 {
            return Vec::new();
        }
        if keep < order.len() {
            order.select_nth_unstable_by(keep - 1, &better);
            order.truncate(keep);
        }
        order
    };
    let positions: Vec<usize> = (0..n).collect();
    let mut order = if parts > 1 {
        let bests = on_chunks(&positions, n.div_ceil(parts), |part| best_of(part.to_vec()));
        best_of(bests.concat())
    } else {
        best_of(positions)
    };
    order.sort_by(&better);
    order
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

    /// A selection over as many candidates as a split decision has (its columns' points
    /// worked out on several threads where there are several cores) gives the points of
    /// each column and the totals summed column by column, to the bit, for every selector
    /// and any number of columns.
    #[test]
    fn a_split_size_selection_equals_the_columns_taken_one_by_one() {
        let n = crate::scheduling::scheduler::SPLIT_MIN_CANDIDATES + 7;
        let mut rng = policy_sdk::testing::XorShift::new(0x2545_f491_4f6c_dd1d);
        let mut next = move || rng.below(u64::MAX);
        let columns: Vec<(i64, Vec<Penalty>)> = vec![
            (3, (0..n).map(|_| (next() % 101) as Penalty).collect()),
            (1, (0..n).map(|_| next() as Penalty).collect()),
            (2, vec![7; n]),
            (
                5,
                (0..n).map(|_| -((next() % 1_000_000) as Penalty)).collect(),
            ),
            (
                1,
                (0..n).map(|_| [1, 1000][(next() % 2) as usize]).collect(),
            ),
        ];
        for selector in [
            SelectorKind::Rank,
            SelectorKind::NormalizedSum,
            SelectorKind::RawSum,
        ] {
            for used in 1..=columns.len() {
                let columns = &columns[..used];
                let selection =
                    select(selector, columns.iter().map(|(f, p)| (*f, p.as_slice())), n);
                let points: Vec<Vec<f64>> = columns
                    .iter()
                    .map(|(_, p)| points_of(selector, p))
                    .collect();
                let mut totals = vec![0.0; n];
                for ((factor, _), points) in columns.iter().zip(&points) {
                    for (t, p) in totals.iter_mut().zip(points) {
                        *t += p * *factor as f64;
                    }
                }
                assert!(
                    selection.points == points,
                    "{selector:?}, {used} columns: points"
                );
                assert!(
                    selection.totals == totals,
                    "{selector:?}, {used} columns: totals"
                );
            }
        }
    }

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

    /// One selection worked by hand: the penalties of each weight (with its factor) over
    /// hosts h1..h3 (or more), the points and contributions each gets, the totals and the
    /// host chosen (ties to the lowest host id).
    struct Case {
        name: &'static str,
        selector: SelectorKind,
        /// (factor, penalty per host)
        weights: &'static [(i64, &'static [Penalty])],
        /// points per weight per host
        points: &'static [&'static [f64]],
        /// contribution per weight per host
        contributions: &'static [&'static [f64]],
        totals: &'static [f64],
        chosen: &'static str,
    }

    #[test]
    fn selector_arithmetic_matches_hand_computed_ranks_factors_contributions_and_tie_break() {
        let cases = [
            Case {
                // The worked example of docs/explain.md.
                name: "rank: cpu-load x2 decides against free-memory x1",
                selector: SelectorKind::Rank,
                weights: &[(2, &[35, 10, 60]), (1, &[-100, -300, -500])],
                points: &[&[1.0, 2.0, 0.0], &[0.0, 1.0, 2.0]],
                contributions: &[&[2.0, 4.0, 0.0], &[0.0, 1.0, 2.0]],
                totals: &[2.0, 5.0, 2.0],
                chosen: "h2",
            },
            Case {
                name: "rank: equal penalties share a rank, equal totals go to the lowest id",
                selector: SelectorKind::Rank,
                weights: &[(3, &[20, 20, 50]), (1, &[7, 7, 7])],
                points: &[&[1.0, 1.0, 0.0], &[0.0, 0.0, 0.0]],
                contributions: &[&[3.0, 3.0, 0.0], &[0.0, 0.0, 0.0]],
                totals: &[3.0, 3.0, 0.0],
                chosen: "h1",
            },
            Case {
                name: "rank: a factor of 0 silences a unit",
                selector: SelectorKind::Rank,
                weights: &[(0, &[0, 50, 90]), (1, &[9, 5, 1])],
                points: &[&[2.0, 1.0, 0.0], &[0.0, 1.0, 2.0]],
                contributions: &[&[0.0, 0.0, 0.0], &[0.0, 1.0, 2.0]],
                totals: &[0.0, 1.0, 2.0],
                chosen: "h3",
            },
            Case {
                name: "normalized sum: scaled to 0..1, lowest total wins",
                selector: SelectorKind::NormalizedSum,
                weights: &[(2, &[10, 30, 50]), (4, &[0, 100, 25])],
                points: &[&[0.0, 0.5, 1.0], &[0.0, 1.0, 0.25]],
                contributions: &[&[0.0, 1.0, 2.0], &[0.0, 4.0, 1.0]],
                totals: &[0.0, 5.0, 3.0],
                chosen: "h1",
            },
            Case {
                name: "raw sum: factor x raw, lowest total wins, ties to the lowest id",
                selector: SelectorKind::RawSum,
                weights: &[(2, &[10, 5, 5]), (1, &[-4, 6, 6])],
                points: &[&[10.0, 5.0, 5.0], &[-4.0, 6.0, 6.0]],
                contributions: &[&[20.0, 10.0, 10.0], &[-4.0, 6.0, 6.0]],
                totals: &[16.0, 16.0, 16.0],
                chosen: "h1",
            },
        ];
        for case in &cases {
            let n = case.totals.len();
            let selection = select(case.selector, case.weights.iter().map(|(f, p)| (*f, *p)), n);
            assert_eq!(selection.totals, case.totals, "{}: totals", case.name);
            for (c, (factor, _)) in case.weights.iter().enumerate() {
                assert_eq!(selection.points[c], case.points[c], "{}: points", case.name);
                let contributions: Vec<f64> = (0..n)
                    .map(|pos| selection.contribution(c, *factor, pos))
                    .collect();
                assert_eq!(
                    contributions, case.contributions[c],
                    "{}: contributions",
                    case.name
                );
            }
            // Hosts listed out of id order, so the tie-break is by id, not by position.
            let snapshot = policy_sdk::testing::snapshot()
                .hosts(
                    (1..=n)
                        .rev()
                        .map(|i| policy_sdk::testing::host(&format!("h{i}"))),
                )
                .build();
            let survivors: Vec<HostIndex> = (0..n as HostIndex).rev().collect();
            let best = pick_best(case.selector, &selection.totals, &survivors, &snapshot)
                .expect("a host is chosen");
            assert_eq!(
                snapshot.hosts[best as usize].id, case.chosen,
                "{}: chosen",
                case.name
            );
        }
    }

    /// The worked example of docs/explain.md is the first case above, row for row.
    #[test]
    fn worked_example_in_the_docs_is_what_the_selector_computes() {
        let doc = include_str!("../../../docs/explain.md");
        let (cpu, memory): (&[Penalty], &[Penalty]) = (&[35, 10, 60], &[-100, -300, -500]);
        let selection = select(SelectorKind::Rank, [(2, cpu), (1, memory)], 3);
        for pos in 0..3 {
            let row = format!(
                "| h{} | {} | {} | {} | {} | {} | {} | {} |",
                pos + 1,
                cpu[pos],
                selection.points[0][pos],
                selection.contribution(0, 2, pos),
                memory[pos],
                selection.points[1][pos],
                selection.contribution(1, 1, pos),
                selection.totals[pos],
            );
            assert!(doc.contains(&row), "docs/explain.md lacks the row {row}");
        }
        assert!(doc.contains("h2 wins with 5"));
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

    /// A column ranked in parts (sorted apart, merged, looked up part by part) gets the
    /// ranks of one part, for columns of every length around the parts' boundaries, with
    /// ties within and across parts.
    #[test]
    fn ranks_in_any_number_of_parts_equal_the_ranks_in_one() {
        let mut rng = policy_sdk::testing::XorShift::new(17);
        for n in [2, 3, 7, 64, 1_001] {
            // Wide values (the sorting path), a few of them repeated.
            let penalties: Vec<Penalty> = (0..n).map(|_| (rng.below(40) as i64) << 40).collect();
            let one = ranks_in_parts(&penalties, 1);
            let want: Vec<usize> = penalties
                .iter()
                .map(|p| penalties.iter().filter(|q| *q > p).count())
                .collect();
            assert_eq!(one, want, "{n} penalties");
            for parts in 2..=5 {
                assert_eq!(
                    ranks_in_parts(&penalties, parts),
                    want,
                    "{n} in {parts} parts"
                );
            }
        }
        assert_eq!(
            merged(vec![vec![1, 4, 9], vec![2, 4], vec![0, 10]]),
            [0, 1, 2, 4, 4, 9, 10]
        );
        assert_eq!(merged(Vec::new()), Vec::<Penalty>::new());
    }

    /// The best candidates picked in parts are the best of all, best first, for any number
    /// kept (none, fewer than a part, more than a part, all) and ties broken by the order's
    /// second key.
    #[test]
    fn the_best_picked_in_parts_are_the_best_of_all() {
        let mut rng = policy_sdk::testing::XorShift::new(29);
        let n = 2_000;
        // Totals with many ties; the position breaks them, as host ids do in a decision.
        let totals: Vec<u64> = (0..n).map(|_| rng.below(50)).collect();
        let better = |a: &usize, b: &usize| totals[*b].cmp(&totals[*a]).then(a.cmp(b));
        let mut all: Vec<usize> = (0..n).collect();
        all.sort_by(better);
        for keep in [0, 1, 5, 700, 1_500, n] {
            for parts in 1..=4 {
                assert_eq!(
                    best_first_in_parts(n, keep, parts, better),
                    all[..keep],
                    "best {keep} in {parts} parts"
                );
            }
        }
    }
}
