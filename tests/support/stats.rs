//! Statistics of measured samples: the spread of connections over workers, and percentiles.

/// The arithmetic mean; 0 for no values.
pub fn mean(values: &[u64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<u64>() as f64 / values.len() as f64
}

/// The coefficient of variation (population standard deviation over the mean) of per-worker
/// counts: 0 for an even split, and 0 when nothing was counted at all.
pub fn cv(counts: &[u64]) -> f64 {
    let m = mean(counts);
    if m == 0.0 {
        return 0.0;
    }
    let var = counts.iter().map(|&c| (c as f64 - m).powi(2)).sum::<f64>() / counts.len() as f64;
    var.sqrt() / m
}

/// Counts per slot of the slots in `answers`, for `slots` slots; a slot outside the range is
/// not counted.
pub fn per_slot(answers: &[u32], slots: usize) -> Vec<u64> {
    let mut counts = vec![0; slots];
    for &s in answers {
        if let Some(c) = counts.get_mut(s as usize) {
            *c += 1;
        }
    }
    counts
}

/// The sample at quantile `p` (0 to 1) of `sorted`, by nearest rank; `None` for no samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * p).round() as usize;
    Some(sorted[i.min(last)])
}

/// Sorts floats for [`percentile`]; a NaN sorts last instead of making the order undefined.
pub fn sort(values: &mut [f64]) {
    values.sort_by(f64::total_cmp);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_has_no_variation() {
        assert_eq!(cv(&[5, 5, 5, 5]), 0.0);
        assert_eq!(cv(&[0, 0]), 0.0);
        assert!((cv(&[1, 3]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<u64> = (1..=101).collect();
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.99), Some(100));
        assert_eq!(percentile(&v, 1.0), Some(101));
        assert_eq!(percentile::<u64>(&[], 0.5), None);
    }

    #[test]
    fn per_slot_skips_unknown_slots() {
        assert_eq!(per_slot(&[0, 1, 1, 7], 2), vec![1, 2]);
    }
}
