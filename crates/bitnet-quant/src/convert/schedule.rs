//! Schedule: the weights of a graph in batches bounded by bytes, quantized one batch while
//! the previous one is emitted, and how much of what comes next to read ahead from disk.

use std::ops::Range;

/// Memory a batch may hold per thread; a batch always takes at least its largest weight.
/// Small batches lose nothing (each weight is quantized in parallel inside). With `quant::kn`
/// reading a band at a time, a batch is mostly codes: 512 KiB per thread keeps two batches of
/// codes, the one quantized and the one emitted, near the size of the largest weight's codes
/// (the budget also bounds what `quant::Spare` keeps). Halving it from 1 MiB lowered peak
/// memory at the same speed (docs/benchmarks.md, "Tuning constants").
pub(super) const BATCH_BYTES_PER_THREAD: u64 = 512 << 10;

/// The byte budget of a batch: `fixed` when given, else [`BATCH_BYTES_PER_THREAD`] per thread,
/// and never less than the costliest weight (which must fit in a batch alone).
pub(super) fn budget(costs: &[u64], threads: usize, fixed: Option<u64>) -> u64 {
    let largest = costs.iter().copied().max().unwrap_or(0);
    fixed.unwrap_or_else(|| largest.max(threads as u64 * BATCH_BYTES_PER_THREAD))
}

/// Consecutive batches of the jobs whose costs are `costs`: each as many jobs as fit in
/// `budget`, at least one.
pub(super) fn batches(costs: &[u64], budget: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < costs.len() {
        let mut end = start;
        let mut used = 0;
        while end < costs.len() && (end == start || used + costs[end] <= budget) {
            used += costs[end];
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// How many of the jobs after a batch (costs `next`) to read ahead while it is quantized: as
/// many as fit in `budget`, at least one.
pub(super) fn read_ahead(next: &[u64], budget: u64) -> usize {
    let mut ahead = 0;
    let mut count = 0;
    for &c in next {
        if ahead > 0 && ahead + c > budget {
            break;
        }
        ahead += c;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_fill_the_budget_in_order_and_cover_every_job_once() {
        assert_eq!(batches(&[3, 3, 3, 1, 5], 6), [0..2, 2..4, 4..5]);
        assert_eq!(batches(&[], 6), Vec::<Range<usize>>::new());
    }

    #[test]
    fn a_job_over_the_budget_is_a_batch_of_its_own() {
        assert_eq!(batches(&[1, 10, 1, 1], 4), [0..1, 1..2, 2..4]);
    }

    #[test]
    fn the_budget_is_at_least_the_largest_job() {
        assert_eq!(budget(&[1, 9 << 20], 2, None), 9 << 20);
        assert_eq!(budget(&[1, 2], 2, None), 2 * BATCH_BYTES_PER_THREAD);
        assert_eq!(budget(&[1, 2], 2, Some(7)), 7);
    }

    #[test]
    fn read_ahead_takes_what_fits_and_at_least_one() {
        assert_eq!(read_ahead(&[2, 2, 2], 5), 2);
        assert_eq!(read_ahead(&[9, 1], 5), 1);
        assert_eq!(read_ahead(&[], 5), 0);
    }
}
