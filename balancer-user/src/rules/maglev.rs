//! The sticky table: which slot serves each client address, by Maglev consistent hashing.
//!
//! The program hashes the client's address to an index of a table of [`STICKY_TABLE`] entries
//! and sends the connection to the slot stored there (or, if that slot is not up, lets
//! least-loaded choose). The supervisor fills the table from the set of up slots. Maglev's fill
//! gives each slot a near-equal share of the entries, and when one of N slots leaves, only about
//! 1/N of the entries change owner: the clients of the slot that left, plus a small
//! redistribution. Clients of the other slots stay where they were.

use balancer_common::policy::{mix, STICKY_TABLE};

/// Marks an entry no slot owns (no slot up): the program then falls back to least-loaded.
pub const NONE: u32 = u32::MAX;

/// Fills a table of `size` entries (a prime) for the slots in `up`.
pub fn build(up: &[u32], size: u32) -> Vec<u32> {
    let m = size as u64;
    let mut table = vec![NONE; size as usize];
    if up.is_empty() {
        return table;
    }
    // Each slot's preference order over the table depends on its id alone, so the order of
    // `up` and the presence of other slots do not change it.
    let prefs: Vec<(u64, u64)> = up
        .iter()
        .map(|&s| (mix(0x6d61_676c, s) % m, mix(0x736b_6970, s) % (m - 1) + 1))
        .collect();
    let mut next = vec![0u64; up.len()];
    let mut filled = 0u64;
    'fill: loop {
        for (i, &slot) in up.iter().enumerate() {
            let (offset, skip) = prefs[i];
            loop {
                let c = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[c] == NONE {
                    table[c] = slot;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// The table for the program's size.
pub fn table(up: &[u32]) -> Vec<u32> {
    build(up, STICKY_TABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_owned_and_shares_are_even() {
        let up: Vec<u32> = (0..8).collect();
        let t = build(&up, 65_537);
        let mut count = [0u32; 8];
        for &s in &t {
            count[s as usize] += 1;
        }
        let even = 65_537.0 / 8.0;
        for c in count {
            assert!((c as f64 - even).abs() / even < 0.02, "{count:?}");
        }
        assert!(build(&[], 101).iter().all(|&s| s == NONE));
    }

    #[test]
    fn losing_one_of_n_slots_moves_about_one_nth_of_the_clients() {
        for n in [4u32, 8, 16] {
            let before = table(&(0..n).collect::<Vec<_>>());
            let gone = n / 2;
            let rest: Vec<u32> = (0..n).filter(|&s| s != gone).collect();
            let after = table(&rest);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64;
            let share = moved / STICKY_TABLE as f64;
            eprintln!(
                "sticky: {n} slots, one leaves: {:.2}% of clients move (1/N = {:.2}%)",
                share * 100.0,
                100.0 / n as f64
            );
            // The departed slot's own entries (1/n) must move; Maglev moves little else.
            assert!(
                share < 1.0 / n as f64 * 1.25,
                "n={n}: {share:.4} of clients moved"
            );
            let stayed_wrongly = before
                .iter()
                .zip(&after)
                .filter(|(a, b)| **a != gone && a != b)
                .count();
            assert!(
                (stayed_wrongly as f64 / STICKY_TABLE as f64) < 0.25 / n as f64,
                "n={n}: {stayed_wrongly} entries of other slots moved"
            );
            // Coming back restores the original table exactly.
            assert_eq!(table(&(0..n).collect::<Vec<_>>()), before);
        }
    }

    #[test]
    fn the_order_of_up_slots_does_not_matter_for_ownership_counts() {
        let a = build(&[0, 1, 2, 3], 1009);
        let b = build(&[3, 2, 1, 0], 1009);
        let count = |t: &[u32], s: u32| t.iter().filter(|&&x| x == s).count();
        for s in 0..4 {
            assert!(count(&a, s).abs_diff(count(&b, s)) < 30);
        }
    }
}
