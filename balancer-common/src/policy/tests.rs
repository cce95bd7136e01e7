//! The policies driven from the host: the same code the program runs, over loads the tests
//! choose.

extern crate std;
use std::vec::Vec;

use super::*;

/// A deterministic seed source for the tests (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn picks_the_smallest_load() {
    let loads = [5u64, 3, 9, 1, 4];
    for seed in 0..1000 {
        assert_eq!(least_loaded(5, seed, |s| Some(loads[s as usize])), Some(3));
    }
}

#[test]
fn skips_unselectable_slots() {
    let loads = [Some(5u64), None, Some(2), None];
    for seed in 0..1000 {
        assert_eq!(least_loaded(4, seed, |s| loads[s as usize]), Some(2));
    }
    assert_eq!(least_loaded(4, 1, |_| None), None);
    assert_eq!(least_loaded(0, 1, |_| Some(0)), None);
}

#[test]
fn ties_are_broken_uniformly_not_by_index() {
    // Slots 0, 3, 4 and 7 tie at the minimum; the others are busier.
    let loads = [2u64, 5, 9, 2, 2, 7, 3, 2];
    let mut rng = Rng(0x1234_5678);
    let mut hits = [0u32; 8];
    let rounds = 40_000;
    for _ in 0..rounds {
        let s = least_loaded(8, rng.next(), |s| Some(loads[s as usize])).unwrap();
        hits[s as usize] += 1;
    }
    for (slot, &h) in hits.iter().enumerate() {
        if loads[slot] == 2 {
            let share = h as f64 / rounds as f64;
            assert!(
                (share - 0.25).abs() < 0.02,
                "slot {slot} got {share:.3} of ties, want 0.25"
            );
        } else {
            assert_eq!(h, 0, "slot {slot} is busier than the minimum");
        }
    }
}

#[test]
fn all_idle_slots_share_evenly() {
    let mut rng = Rng(99);
    let n = 32;
    let mut hits = std::vec![0u32; n];
    let rounds = 64_000;
    for _ in 0..rounds {
        hits[least_loaded(n as u32, rng.next(), |_| Some(0)).unwrap() as usize] += 1;
    }
    let even = rounds as f64 / n as f64;
    for h in hits {
        assert!((h as f64 - even).abs() / even < 0.08, "{h} vs {even}");
    }
}

#[test]
fn assignments_counted_at_selection_spread_a_burst() {
    // The program adds each assignment to the chosen slot's load before the next selection:
    // a burst onto idle slots must then spread round the slots, never pile onto one.
    let mut loads = [0u64; 4];
    let mut rng = Rng(7);
    for _ in 0..64 {
        let s = least_loaded(4, rng.next(), |s| Some(loads[s as usize])).unwrap();
        loads[s as usize] += 1;
    }
    assert_eq!(loads, [16, 16, 16, 16]);
}

#[test]
fn large_groups_sample_a_window_and_stay_fair() {
    let n = 1024u32;
    let mut rng = Rng(3);
    let mut hits = std::vec![0u32; n as usize];
    for _ in 0..(n * 50) {
        let seed = rng.next();
        let mut seen = 0;
        let s = least_loaded(n, seed, |_| {
            seen += 1;
            Some(1)
        })
        .unwrap();
        assert_eq!(seen, SCAN_LIMIT, "cost must not grow with the group");
        hits[s as usize] += 1;
        let mut seen = 0;
        least_loaded(n, seed, |_| {
            seen += 1;
            Some(0)
        });
        assert_eq!(seen, 1, "an idle slot ends the scan");
    }
    let min = *hits.iter().min().unwrap();
    assert!(
        min > 10,
        "every slot is reachable: least hit {min} of 50 expected"
    );
}

#[test]
fn the_scan_stops_at_the_first_idle_slot_and_reaches_every_idle_slot() {
    // Slots 2 and 5 are idle; the rest hold work. Every selection must take an idle one,
    // after reading no more slots than it takes to reach one from its random start.
    let loads = [3u64, 1, 0, 2, 4, 0, 1, 1];
    let mut rng = Rng(11);
    let mut hits = [0u32; 8];
    for _ in 0..10_000 {
        let mut seen = 0;
        let s = least_loaded(8, rng.next(), |s| {
            seen += 1;
            Some(loads[s as usize])
        })
        .unwrap();
        assert!(s == 2 || s == 5, "chose busy slot {s}");
        assert!(seen <= 5, "read {seen} slots to reach an idle one");
        hits[s as usize] += 1;
    }
    // Of the 8 starts, 5 reach slot 2 first (6, 7 wrap round to 0, 1, 2) and 3 reach
    // slot 5: the bias the docs name, and no more.
    assert!((5_950..6_550).contains(&hits[2]), "{hits:?}");
    assert!((3_450..4_050).contains(&hits[5]), "{hits:?}");
}

#[test]
fn large_groups_avoid_a_heavily_loaded_slot() {
    let n = 256u32;
    let mut rng = Rng(11);
    let stuck = 17u32;
    let picks: Vec<u32> = (0..20_000)
        .map(|_| least_loaded(n, rng.next(), |s| Some(if s == stuck { 100 } else { 1 })).unwrap())
        .collect();
    assert!(!picks.contains(&stuck));
}

#[test]
fn reduce_stays_in_range() {
    for n in [1u32, 2, 3, 33, 1024] {
        for r in [0u32, 1, u32::MAX / 2, u32::MAX] {
            assert!(reduce(r, n) < n);
        }
    }
}

#[test]
fn policy_names_round_trip() {
    for p in Policy::ALL {
        assert_eq!(Policy::from_name(p.name()), Some(p));
        assert_eq!(Policy::from_u32(p as u32), Some(p));
    }
    assert_eq!(Policy::from_name("fastest"), None);
}

/// Runs a whole selection the way the program does, with per-slot loads and weights.
fn select(mut scan: Scan, loads: &[u64], weights: &[u32]) -> Option<u32> {
    for i in 0..scan.count() {
        let s = scan.slot(i);
        scan.offer(s, loads[s as usize], weights[s as usize]);
    }
    scan.best()
}

#[test]
fn p2c_looks_at_two_distinct_slots_and_takes_the_less_loaded() {
    let mut rng = Rng(5);
    let loads = [3u64, 0, 7, 1, 9];
    let mut hits = [0u32; 5];
    for _ in 0..50_000 {
        let scan = Scan::pair(5, rng.next());
        assert_eq!(scan.count(), 2);
        let (a, b) = (scan.slot(0), scan.slot(1));
        assert!(a != b && a < 5 && b < 5, "{a} {b}");
        let chosen = select(scan, &loads, &[1; 5]).unwrap();
        let want = if loads[a as usize] <= loads[b as usize] {
            a
        } else {
            b
        };
        assert_eq!(chosen, want);
        hits[chosen as usize] += 1;
    }
    // Slot 4 (the most loaded) is never the less loaded of two; slot 1 (idle) wins whenever
    // drawn: 2/5 of the pairs.
    assert_eq!(hits[4], 0);
    let share = hits[1] as f64 / 50_000.0;
    assert!((share - 0.4).abs() < 0.02, "{share}");
    // Degenerate groups.
    assert_eq!(Scan::pair(1, 9).count(), 1);
    assert_eq!(Scan::pair(0, 9).count(), 0);
}

#[test]
fn p2c_pairs_cover_every_slot_evenly() {
    let mut rng = Rng(17);
    let n = 1024u32;
    let mut seen = std::vec![0u32; n as usize];
    for _ in 0..(n * 40) {
        let scan = Scan::pair(n, rng.next());
        seen[scan.slot(0) as usize] += 1;
        seen[scan.slot(1) as usize] += 1;
    }
    let (min, max) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
    assert!(
        min > 40 && max < 130,
        "each slot drawn ~80 times: {min}..{max}"
    );
}

#[test]
fn exponential_has_mean_one_over_ln2_bits() {
    let mut rng = Rng(23);
    let n = 200_000;
    let sum: f64 = (0..n)
        .map(|_| exponential(rng.next()) as f64 / 65536.0)
        .sum();
    // E[-log2 U] = 1/ln 2 = 1.4427; Mitchell's approximation shifts it slightly.
    let mean = sum / n as f64;
    assert!((mean - core::f64::consts::LOG2_E).abs() < 0.06, "{mean}");
}

#[test]
fn weighted_idle_slots_share_in_proportion_to_weight() {
    let mut rng = Rng(29);
    let weights = [3u32, 1, 1, 1];
    let mut hits = [0u32; 4];
    let rounds = 60_000;
    for _ in 0..rounds {
        hits[select(Scan::weighted(4, rng.next()), &[0; 4], &weights).unwrap() as usize] += 1;
    }
    let shares: std::vec::Vec<f64> = hits.iter().map(|&h| h as f64 / rounds as f64).collect();
    for (i, want) in [0.5, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0].iter().enumerate() {
        assert!((shares[i] - want).abs() < 0.03, "slot {i}: {shares:?}");
    }
}

#[test]
fn weighted_prefers_the_lowest_load_per_weight() {
    let mut rng = Rng(31);
    // Slot 0: 6 open on weight 3 (2 per unit); slot 1: 4 on weight 1; slot 2: 1 on weight 1.
    let mut hits = [0u32; 3];
    for _ in 0..10_000 {
        hits[select(Scan::weighted(3, rng.next()), &[6, 4, 1], &[3, 1, 1]).unwrap() as usize] += 1;
    }
    assert!(hits[2] > 7_000 && hits[1] < 500, "{hits:?}");
    // A zero weight counts as 1, never as a division by zero.
    assert!(select(Scan::weighted(2, 1), &[0, 0], &[0, 0]).is_some());
}

#[test]
fn next_random_spreads_every_bit_and_states_apart_give_apart_sequences() {
    let (mut a, mut b) = (0u64, 1u64);
    let xs: std::vec::Vec<u64> = (0..4096).map(|_| next_random(&mut a)).collect();
    // Each bit set in about half the draws: the window start uses the high bits, the
    // tie-break all of them.
    for bit in 0..64 {
        let ones = xs.iter().filter(|x| *x >> bit & 1 == 1).count();
        assert!(
            (1800..2300).contains(&ones),
            "bit {bit} set {ones} times of 4096"
        );
    }
    // Two CPUs seeded apart do not walk in step.
    let ys: std::vec::Vec<u64> = (0..4096).map(|_| next_random(&mut b)).collect();
    assert!(xs.iter().zip(&ys).all(|(x, y)| x != y));
    let starts = xs
        .iter()
        .map(|x| reduce((*x >> 32) as u32, 4))
        .fold([0u32; 4], |mut c, s| {
            c[s as usize] += 1;
            c
        });
    assert!(
        starts.iter().all(|&c| (900..1150).contains(&c)),
        "{starts:?}"
    );
}

#[test]
fn offering_the_first_candidates_then_skipping_them_is_the_same_scan() {
    let mut rng = Rng(7);
    for slots in [1u32, 2, 3, 5, 32, 33, 1024] {
        for _ in 0..200 {
            let seed = rng.next();
            let loads: Vec<u64> = (0..slots).map(|_| rng.next() % 3).collect();
            for make in [
                Scan::new as fn(u32, u64) -> Scan,
                Scan::first_idle,
                Scan::pair,
                Scan::weighted,
            ] {
                let (mut whole, mut split) = (make(slots, seed), make(slots, seed));
                let offer = |scan: &mut Scan, i: u32| {
                    let slot = scan.slot(i);
                    scan.offer(slot, loads[slot as usize], 1 + slot % 2)
                };
                for i in 0..whole.count() {
                    if offer(&mut whole, i) {
                        break;
                    }
                }
                let mut done = false;
                for i in 0..2.min(split.count()) {
                    if offer(&mut split, i) {
                        done = true;
                        break;
                    }
                }
                if !done {
                    split.skip(2);
                    for i in 0..split.count() {
                        if offer(&mut split, i) {
                            break;
                        }
                    }
                }
                assert_eq!(whole.best(), split.best(), "{slots} slots, seed {seed}");
            }
        }
    }
}

#[test]
fn round_robin_visits_each_slot_in_turn() {
    let picks: std::vec::Vec<u32> = (0..8).map(|t| round_robin(t, 3).unwrap()).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1]);
    assert_eq!(round_robin(5, 0), None);
}

#[test]
fn sticky_index_spreads_clients_over_the_table() {
    let mut buckets = std::vec![0u32; 16];
    for host in 0..16_000u32 {
        let idx = sticky_index([0x7f00_0000 | host, 0, 0, 0]);
        assert!(idx < STICKY_TABLE);
        buckets[(idx * 16 / STICKY_TABLE) as usize] += 1;
    }
    assert!(
        buckets.iter().all(|&b| (800..1200).contains(&b)),
        "{buckets:?}"
    );
    assert_eq!(sticky_index([1, 2, 3, 4]), sticky_index([1, 2, 3, 4]));
}

#[test]
fn policies_round_trip_and_only_hash_leaves_connections_uncounted() {
    for p in Policy::ALL {
        assert_eq!(Policy::from_u32(p as u32), Some(p));
        assert_eq!(Policy::from_name(p.name()), Some(p));
        assert_eq!(p.counts(), p != Policy::Hash, "{p:?}");
        assert_eq!(p.overflows(), p == Policy::LeastLoaded, "{p:?}");
        assert_eq!(p.reads_address(), p == Policy::Sticky, "{p:?}");
    }
    assert_eq!(Policy::from_u32(Policy::ALL.len() as u32), None);
}
