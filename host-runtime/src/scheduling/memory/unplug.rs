//! The exact unplug search: which hot-plugged DIMMs add up exactly to a reduction (a
//! subset sum over the DIMMs' sizes in units of their common divisor), fewest DIMMs first,
//! bounded in time and memory.

use std::fmt;

/// Most cells (devices + 1) x (hot-plugged memory in units + 1) the exact unplug search
/// fills in its table (2 bytes each: at most 8 MiB).
pub const MAX_SUBSET_TABLE_CELLS: u64 = 1 << 22;

/// Most devices the unplug search enumerates (2^n subsets) when the table would be too
/// large (DIMM sizes with no large common divisor).
pub const MAX_ENUMERATED_DEVICES: usize = 20;

/// The result of [`search_unplug`]: indices into the sizes it was given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnplugSearch {
    /// The subset adding up exactly to the target, if any.
    pub exact: Option<Vec<usize>>,
    /// Without an exact subset: the largest achievable sum below the target (above 0),
    /// with its subset.
    pub below: Option<(u64, Vec<usize>)>,
    /// Without an exact subset: the smallest achievable sum above the target and at most
    /// the limit, with its subset.
    pub above: Option<(u64, Vec<usize>)>,
}

/// The unplug search gave up: the input is too large for its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTooLarge {
    /// Devices searched.
    pub devices: usize,
    /// Their total size in units of their greatest common divisor.
    pub units: u64,
}

impl fmt::Display for SearchTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot search the hot unplug: {} removable DIMMs totalling {} units of their \
             common size need a table of more than {MAX_SUBSET_TABLE_CELLS} cells, and more \
             than {MAX_ENUMERATED_DEVICES} DIMMs are too many to enumerate",
            self.devices, self.units
        )
    }
}

impl std::error::Error for SearchTooLarge {}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Chooses which of `sizes` (DIMM sizes in MiB, in order of preference: the first is the
/// one to unplug first) add up exactly to `target`: the fewest devices, and among subsets
/// of that size the one that takes the most preferred devices (compared in preference
/// order). When there is none, finds the nearest achievable sums below `target` (above 0)
/// and above it (at most `limit`), each with its subset chosen by the same rule.
///
/// Sizes are first divided by their greatest common divisor (with the target's; so DIMMs
/// in multiples of the 128 MiB factor cost one table column per 128 MiB). A
/// devices x total-units table of at most [`MAX_SUBSET_TABLE_CELLS`] is filled
/// (16 DIMMs of up to 32 GiB each in 128 MiB units: 0.5 M cells, well under a
/// millisecond); when it would be larger, up to [`MAX_ENUMERATED_DEVICES`] devices are
/// enumerated instead (2^n subsets), and beyond both the answer is [`SearchTooLarge`].
/// Devices of size 0 are never chosen.
pub fn search_unplug(
    sizes: &[u64],
    target: u64,
    limit: u64,
) -> std::result::Result<UnplugSearch, SearchTooLarge> {
    let items: Vec<usize> = (0..sizes.len()).filter(|&i| sizes[i] > 0).collect();
    if target == 0 {
        return Ok(UnplugSearch {
            exact: Some(Vec::new()),
            ..Default::default()
        });
    }
    let g = items.iter().fold(target, |g, &i| gcd(g, sizes[i]));
    let weights: Vec<u64> = items.iter().map(|&i| sizes[i] / g).collect();
    let total: u64 = weights.iter().fold(0u64, |s, &w| s.saturating_add(w));
    let cells = (weights.len() as u64 + 1).saturating_mul(total.saturating_add(1));
    let found = if cells <= MAX_SUBSET_TABLE_CELLS {
        search_table(&weights, total)
    } else if weights.len() <= MAX_ENUMERATED_DEVICES {
        search_enumerate(&weights)
    } else {
        return Err(SearchTooLarge {
            devices: weights.len(),
            units: total,
        });
    };
    // `found(sum)`: the best subset for an achievable sum (in units), None otherwise.
    let t = target / g;
    let to_original =
        |picks: Vec<usize>| -> Vec<usize> { picks.into_iter().map(|k| items[k]).collect() };
    let exact = found.best(t).map(to_original);
    let near = |s: Option<u64>| s.and_then(|s| found.best(s).map(|p| (s * g, to_original(p))));
    let (below, above) = if exact.is_some() {
        (None, None)
    } else {
        (
            near(found.nearest_below(t)),
            near(found.nearest_above(t, limit / g)),
        )
    };
    Ok(UnplugSearch {
        exact,
        below,
        above,
    })
}

/// Best subsets by achievable sum, from either search.
enum Found {
    /// `table[i * cols + s]`: fewest of items `i..` adding up to `s` (`u16::MAX`: none).
    Table {
        weights: Vec<u64>,
        cols: usize,
        table: Vec<u16>,
    },
    /// The chosen subset (bit i = item i) per achievable sum.
    Enumerated(std::collections::HashMap<u64, u32>),
}

impl Found {
    /// The largest achievable sum in `1..t`.
    fn nearest_below(&self, t: u64) -> Option<u64> {
        match self {
            Found::Table { cols, table, .. } => (1..t.min(*cols as u64))
                .rev()
                .find(|&s| table[s as usize] != u16::MAX),
            Found::Enumerated(best) => best.keys().copied().filter(|&s| s > 0 && s < t).max(),
        }
    }

    /// The smallest achievable sum in `t+1..=limit`.
    fn nearest_above(&self, t: u64, limit: u64) -> Option<u64> {
        match self {
            Found::Table { cols, table, .. } => (t.saturating_add(1)..(*cols as u64))
                .take_while(|&s| s <= limit)
                .find(|&s| table[s as usize] != u16::MAX),
            Found::Enumerated(best) => best.keys().copied().filter(|&s| s > t && s <= limit).min(),
        }
    }

    fn best(&self, sum: u64) -> Option<Vec<usize>> {
        match self {
            Found::Table {
                weights,
                cols,
                table,
            } => {
                let mut s = usize::try_from(sum).ok().filter(|&s| s < *cols)?;
                if table[s] == u16::MAX {
                    return None;
                }
                let mut picks = Vec::new();
                for (i, &w) in weights.iter().enumerate() {
                    let here = table[i * cols + s];
                    let w = w as usize;
                    // Take item i when an optimal subset of items i.. still takes it.
                    if w <= s {
                        let rest = table[(i + 1) * cols + s - w];
                        if rest != u16::MAX && rest + 1 == here {
                            picks.push(i);
                            s -= w;
                        }
                    }
                }
                debug_assert_eq!(s, 0);
                Some(picks)
            }
            Found::Enumerated(best) => best
                .get(&sum)
                .map(|&mask| (0..32).filter(|i| mask & (1 << i) != 0).collect()),
        }
    }
}

fn search_table(weights: &[u64], total: u64) -> Found {
    let n = weights.len();
    let cols = total as usize + 1;
    let mut table = vec![u16::MAX; (n + 1) * cols];
    table[n * cols] = 0;
    for i in (0..n).rev() {
        let w = weights[i] as usize;
        let (row, next) = table[i * cols..(i + 2) * cols].split_at_mut(cols);
        for s in 0..cols {
            let skip = next[s];
            let take = if w <= s && next[s - w] != u16::MAX {
                next[s - w] + 1
            } else {
                u16::MAX
            };
            row[s] = skip.min(take);
        }
    }
    Found::Table {
        weights: weights.to_vec(),
        cols,
        table,
    }
}

fn search_enumerate(weights: &[u64]) -> Found {
    let n = weights.len();
    // The preference key of a subset: item 0 is the most significant bit, so of two
    // subsets of one size the larger key takes the earlier preferred item.
    let key = |mask: u32| (mask.reverse_bits() >> (32 - n.max(1) as u32)) as u64;
    let mut best: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    for mask in 0u32..(1u32 << n) {
        let sum = (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .fold(0u64, |s, i| s.saturating_add(weights[i]));
        let better = match best.get(&sum) {
            None => true,
            Some(&b) => {
                (mask.count_ones(), std::cmp::Reverse(key(mask)))
                    < (b.count_ones(), std::cmp::Reverse(key(b)))
            }
        };
        if better {
            best.insert(sum, mask);
        }
    }
    Found::Enumerated(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testing::XorShift;

    /// The reference's greedy pick: largest first, take it while it fits.
    fn greedy_largest_first(sizes: &[u64], target: u64) -> Option<Vec<u64>> {
        let mut sorted = sizes.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let mut left = target;
        let mut picked = Vec::new();
        for s in sorted {
            if s <= left {
                left -= s;
                picked.push(s);
            }
        }
        (left == 0).then_some(picked)
    }

    fn sizes_of(sizes: &[u64], picks: &[usize]) -> Vec<u64> {
        picks.iter().map(|&i| sizes[i]).collect()
    }

    #[test]
    fn exact_subset_finds_512_plus_512_where_greedy_largest_first_fails() {
        let sizes = [768, 512, 512, 1024];
        // The reference's case: DIMMs 768, 512, 512, 1024 MiB to remove. Greedy takes 768
        // and stops short (256 left, no DIMM that small); 512 + 512 is exact.
        assert_eq!(greedy_largest_first(&[768, 512, 512], 1024), None);
        let found = search_unplug(&[768, 512, 512], 1024, u64::MAX).unwrap();
        assert_eq!(found.exact, Some(vec![1, 2]));
        // With a 1024 DIMM too, greedy fails on 1280 (takes 1024, 256 left); 768 + 512.
        assert_eq!(greedy_largest_first(&sizes, 1280), None);
        let found = search_unplug(&sizes, 1280, u64::MAX).unwrap();
        assert_eq!(sizes_of(&sizes, found.exact.as_ref().unwrap()), [768, 512]);
    }

    #[test]
    fn unplug_search_table_of_cases() {
        // (case, sizes in preference order, target, limit, exact sizes, below, above)
        type Case = (
            &'static str,
            Vec<u64>,
            u64,
            u64,
            Option<Vec<u64>>,
            Option<u64>,
            Option<u64>,
        );
        let cases: Vec<Case> = vec![
            (
                "fewest devices: one 1024 beats 512 + 512",
                vec![512, 512, 1024],
                1024,
                u64::MAX,
                Some(vec![1024]),
                None,
                None,
            ),
            (
                "tie on count: the most preferred (first) device is taken",
                vec![256, 256, 256],
                256,
                u64::MAX,
                Some(vec![256]),
                None,
                None,
            ),
            (
                "no exact subset: nearest below and above",
                vec![1024, 512],
                768,
                u64::MAX,
                None,
                Some(512),
                Some(1024),
            ),
            (
                "above is limited (guaranteed memory)",
                vec![1024, 512],
                768,
                900,
                None,
                Some(512),
                None,
            ),
            (
                "reduction larger than everything hot-plugged",
                vec![256, 128],
                1024,
                u64::MAX,
                None,
                Some(384),
                None,
            ),
            ("nothing removable", vec![], 128, u64::MAX, None, None, None),
            (
                "zero-size devices are never chosen",
                vec![0, 128],
                128,
                u64::MAX,
                Some(vec![128]),
                None,
                None,
            ),
        ];
        for (case, sizes, target, limit, exact, below, above) in cases {
            let found = search_unplug(&sizes, target, limit).unwrap();
            assert_eq!(
                found.exact.as_ref().map(|p| sizes_of(&sizes, p)),
                exact,
                "{case}"
            );
            assert_eq!(found.below.as_ref().map(|b| b.0), below, "{case}");
            assert_eq!(found.above.as_ref().map(|a| a.0), above, "{case}");
            if let Some(p) = &found.exact {
                assert_eq!(sizes_of(&sizes, p).iter().sum::<u64>(), target, "{case}");
            }
        }
        // Tie on count picks the first (most preferred) of equal devices.
        assert_eq!(
            search_unplug(&[256, 256, 256], 256, u64::MAX)
                .unwrap()
                .exact,
            Some(vec![0])
        );
    }

    /// Brute force over every subset: fewest devices, then the most preferred.
    fn brute_force(sizes: &[u64], sum: u64) -> Option<Vec<usize>> {
        let n = sizes.len();
        let mut best: Option<Vec<usize>> = None;
        for mask in 0u32..(1 << n) {
            let picks: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
            if picks.iter().any(|&i| sizes[i] == 0) {
                continue;
            }
            if picks.iter().map(|&i| sizes[i]).sum::<u64>() != sum {
                continue;
            }
            // Same size: lexicographically smaller index list takes earlier items.
            let better = match &best {
                None => true,
                Some(b) => (picks.len(), &picks) < (b.len(), b),
            };
            if better {
                best = Some(picks);
            }
        }
        best
    }

    #[test]
    fn property_table_and_enumeration_agree_with_brute_force_on_random_inputs() {
        let mut rng = XorShift::new(7);
        for round in 0..400 {
            let n = rng.below(9) as usize;
            let unit = [128, 256, 128 * 3][rng.below(3) as usize];
            let sizes: Vec<u64> = (0..n).map(|_| unit * rng.below(9)).collect();
            let total: u64 = sizes.iter().sum();
            let target = unit * (1 + rng.below(total / unit + 2));
            let limit = if rng.below(2) == 0 {
                u64::MAX
            } else {
                unit * rng.below(total / unit + 3)
            };
            let found = search_unplug(&sizes, target, limit).unwrap();
            let ctx = format!("round {round}: sizes {sizes:?} target {target} limit {limit}");
            assert_eq!(found.exact, brute_force(&sizes, target), "{ctx}");
            let exact = found.exact.is_some();
            let below = (1..target)
                .rev()
                .find_map(|s| brute_force(&sizes, s).map(|p| (s, p)))
                .filter(|_| !exact);
            assert_eq!(found.below, below, "{ctx}");
            let above = (target + 1..=total.min(limit))
                .find_map(|s| brute_force(&sizes, s).map(|p| (s, p)))
                .filter(|_| !exact);
            assert_eq!(found.above, above, "{ctx}");
            // The enumeration fallback gives the same subsets as the table.
            let g = sizes.iter().fold(target, |g, &s| gcd(g, s));
            let weights: Vec<u64> = sizes.iter().filter(|&&s| s > 0).map(|s| s / g).collect();
            let table = search_table(&weights, weights.iter().sum());
            let listed = search_enumerate(&weights);
            for s in 0..=weights.iter().sum::<u64>() {
                assert_eq!(table.best(s), listed.best(s), "{ctx}, sum {s} units");
            }
        }
    }

    #[test]
    fn sixteen_dimms_are_fast_and_huge_inputs_are_bounded() {
        // 16 DIMMs of mixed sizes up to 32 GiB in 128 MiB units: the table path.
        let sizes: Vec<u64> = (1..=16).map(|i| 128 * (i * 16 + 1)).collect();
        let start = std::time::Instant::now();
        let target: u64 = sizes[0] + sizes[5] + sizes[15];
        let found = search_unplug(&sizes, target, u64::MAX).unwrap();
        let picked: u64 = sizes_of(&sizes, found.exact.as_ref().unwrap()).iter().sum();
        assert_eq!(picked, target);
        // 16 DIMMs of sizes with no common divisor beyond 1 MiB and up to 1 TiB: the
        // table would be too large, the enumeration answers.
        let odd: Vec<u64> = (0..16).map(|i| (1 << 20) - 2 * i - 1).collect();
        // Every pair (i, 12 - i) adds up to this; the tie goes to the most preferred.
        let found = search_unplug(&odd, odd[3] + odd[9], u64::MAX).unwrap();
        assert_eq!(found.exact, Some(vec![0, 12]));
        // 5,000 such DIMMs: neither path is allowed; a clear bound error, at once.
        let many: Vec<u64> = (0..5_000).map(|i| (1 << 30) - 2 * i - 1).collect();
        let err = search_unplug(&many, many[0], u64::MAX).unwrap_err();
        assert_eq!(err.devices, 5_000);
        assert!(err.to_string().contains("too many to enumerate"), "{err}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }
}
