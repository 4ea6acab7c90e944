//! The read planner: for representative layouts and thousands of random ones, the plan
//! is valid under the rules and has exactly the minimum number of requests, as found by
//! searches that share no code with the planner.

use std::collections::HashMap;

use fieldgate_modbus::{
    naive_request_count, plan, PlanError, PlanLimits, ReadPlan, RegisterKind, Span,
};

use RegisterKind::{Coil, Discrete, Holding, Input};

mod common;
use common::Rng;

fn span(kind: RegisterKind, address: u16, count: u16) -> Span {
    Span {
        kind,
        address,
        count,
    }
}

fn reg(address: u16, count: u16) -> Span {
    span(Holding, address, count)
}

fn limits(max_gap: u16) -> PlanLimits {
    PlanLimits {
        max_gap,
        ..PlanLimits::default()
    }
}

fn cap(l: &PlanLimits, kind: RegisterKind) -> u32 {
    let max = if kind.is_bit() { 2000 } else { 125 };
    u32::from(if kind.is_bit() {
        l.max_bits
    } else {
        l.max_registers
    })
    .min(max)
}

/// Whether the range `[a, b)` of `kind` may be one request: within the cap, and (when
/// merging) no run of more than `max_gap` addresses unused by every field lying wholly
/// inside, checked address by address.
fn range_valid(fields: &[Span], l: &PlanLimits, kind: RegisterKind, a: u32, b: u32) -> bool {
    if b <= a || b - a > cap(l, kind) || b > 65536 {
        return false;
    }
    let inside: Vec<&Span> = fields
        .iter()
        .filter(|f| f.kind == kind && u32::from(f.address) >= a && f.end() <= b)
        .collect();
    if !l.merge {
        return inside
            .iter()
            .any(|f| u32::from(f.address) == a && f.end() == b);
    }
    let mut used = vec![false; (b - a) as usize];
    for f in &inside {
        for x in u32::from(f.address)..f.end() {
            used[(x - a) as usize] = true;
        }
    }
    let mut run = 0;
    for u in used {
        run = if u { 0 } else { run + 1 };
        if run > u32::from(l.max_gap) {
            return false;
        }
    }
    true
}

/// Checks that `p` is a valid plan for `fields`: every field in exactly one request that
/// wholly contains it, with the right offset; every request valid.
fn assert_valid(fields: &[Span], l: &PlanLimits, p: &ReadPlan) {
    let mut seen = vec![0; fields.len()];
    for r in p.requests() {
        let (a, b) = (u32::from(r.address), r.end());
        assert!(
            range_valid(fields, l, r.kind, a, b),
            "invalid request {r:?} for {fields:?} under {l:?}"
        );
        assert_eq!(r.function_code(), r.kind.read_function_code());
        for s in &r.slots {
            let f = fields[s.field as usize];
            seen[s.field as usize] += 1;
            assert_eq!(f.kind, r.kind);
            assert_eq!(u32::from(f.address), a + u32::from(s.offset), "{r:?}");
            assert_eq!(f.count, s.count);
            assert!(f.end() <= b, "field {f:?} split by {r:?}");
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "served {seen:?}: {p:?}");
    assert_eq!(p.naive_requests(), fields.len());
    assert_eq!(naive_request_count(fields), fields.len());
    assert_eq!(
        p.addresses_read(),
        p.requests().iter().map(|r| u64::from(r.count)).sum::<u64>()
    );
}

/// The minimum number of requests, by exhaustive search: every valid range whose ends
/// are field boundaries (any valid range shrinks to one without losing a field), then the
/// smallest set of them containing every field, memoised over the set of fields served.
fn exhaustive_min(fields: &[Span], l: &PlanLimits) -> usize {
    assert!(fields.len() <= 16);
    let mut total = 0;
    for kind in RegisterKind::ALL {
        let idx: Vec<usize> = (0..fields.len())
            .filter(|&i| fields[i].kind == kind)
            .collect();
        if idx.is_empty() {
            continue;
        }
        let mut ranges: Vec<u32> = Vec::new(); // bitmask of fields inside, per range
        for &i in &idx {
            for &j in &idx {
                let (a, b) = (u32::from(fields[i].address), fields[j].end());
                if range_valid(fields, l, kind, a, b) {
                    let mask = idx
                        .iter()
                        .enumerate()
                        .filter(|(_, &k)| u32::from(fields[k].address) >= a && fields[k].end() <= b)
                        .fold(0u32, |m, (bit, _)| m | 1 << bit);
                    ranges.push(mask);
                }
            }
        }
        let all = (1u32 << idx.len()) - 1;
        let mut memo = HashMap::new();
        total += cover(all, 0, &ranges, &mut memo);
    }
    total
}

fn cover(all: u32, served: u32, ranges: &[u32], memo: &mut HashMap<u32, usize>) -> usize {
    if served == all {
        return 0;
    }
    if let Some(&n) = memo.get(&served) {
        return n;
    }
    // Some request must serve the lowest unserved field.
    let i = (!served & all).trailing_zeros();
    let best = ranges
        .iter()
        .filter(|&&m| m & (1 << i) != 0)
        .map(|&m| 1 + cover(all, served | m, ranges, memo))
        .min()
        .unwrap_or(usize::MAX / 2);
    memo.insert(served, best);
    best
}

/// The minimum for fields that do not overlap, by dynamic programming over the sorted
/// fields: a request then serves a consecutive run of them.
fn run_min(fields: &[Span], l: &PlanLimits) -> usize {
    let mut total = 0;
    for kind in RegisterKind::ALL {
        let mut fs: Vec<&Span> = fields.iter().filter(|f| f.kind == kind).collect();
        fs.sort_by_key(|f| f.address);
        for w in fs.windows(2) {
            assert!(w[0].end() <= u32::from(w[1].address), "overlap");
        }
        let n = fs.len();
        let mut best = vec![usize::MAX; n + 1];
        best[0] = 0;
        for end in 1..=n {
            // Runs fs[start..end], growing to the left while within the cap and the
            // gap rule (a gap too wide stays inside every longer run).
            for start in (0..end).rev() {
                let (a, b) = (u32::from(fs[start].address), fs[end - 1].end());
                let gap_too_wide = start + 1 < end
                    && u32::from(fs[start + 1].address) - fs[start].end() > u32::from(l.max_gap);
                if b - a > cap(l, kind) || gap_too_wide || (!l.merge && start + 1 < end) {
                    break;
                }
                if best[start] != usize::MAX {
                    best[end] = best[end].min(best[start] + 1);
                }
            }
        }
        total += best[n];
    }
    total
}

/// Plans, checks validity, and returns the plan.
fn planned(fields: &[Span], l: &PlanLimits) -> ReadPlan {
    let p = plan(fields, l).unwrap_or_else(|e| panic!("{e}"));
    assert_valid(fields, l, &p);
    p
}

fn ranges(p: &ReadPlan) -> Vec<(RegisterKind, u16, u16)> {
    p.requests()
        .iter()
        .map(|r| (r.kind, r.address, r.count))
        .collect()
}

#[test]
fn contiguous_block_is_one_request() {
    let fields: Vec<Span> = (0..50).map(|a| reg(a, 1)).collect();
    let p = planned(&fields, &limits(10));
    assert_eq!(ranges(&p), [(Holding, 0, 50)]);
    assert_eq!((p.requests_per_cycle(), p.naive_requests()), (1, 50));
    assert_eq!(run_min(&fields, &limits(10)), 1);
}

#[test]
fn sparse_fields_merge_across_small_gaps_only() {
    // Gaps of 4, 6, 7 and 10 unused registers.
    let fields = [reg(0, 1), reg(5, 1), reg(12, 1), reg(20, 1), reg(31, 1)];
    let p = planned(&fields, &limits(10));
    assert_eq!(ranges(&p), [(Holding, 0, 32)]);
    let l = limits(9);
    let p = planned(&fields, &l);
    assert_eq!(ranges(&p), [(Holding, 0, 21), (Holding, 31, 1)]);
    assert_eq!(p.requests_per_cycle(), exhaustive_min(&fields, &l));

    // Large gaps: nothing merges.
    let fields = [reg(0, 2), reg(100, 1), reg(300, 1), reg(301, 1)];
    let p = planned(&fields, &limits(10));
    assert_eq!(
        ranges(&p),
        [(Holding, 0, 2), (Holding, 100, 1), (Holding, 300, 2)]
    );
    assert_eq!(p.requests_per_cycle(), exhaustive_min(&fields, &limits(10)));

    // max_gap = 0 merges adjacent fields only.
    let fields = [reg(0, 1), reg(1, 1), reg(3, 1)];
    assert_eq!(planned(&fields, &limits(0)).requests_per_cycle(), 2);
}

#[test]
fn thousand_consecutive_registers_take_eight_requests() {
    let fields: Vec<Span> = (0..1000).map(|a| reg(a, 1)).collect();
    let l = limits(10);
    let p = planned(&fields, &l);
    // ⌈1000 / 125⌉ = 8: no plan can do with fewer.
    assert_eq!(p.requests_per_cycle(), 8);
    assert_eq!(run_min(&fields, &l), 8);
    assert_eq!(p.naive_requests(), 1000);
    assert_eq!(p.addresses_read(), 1000);
    assert!(p.requests().iter().take(8).all(|r| r.count == 125));

    // A device that accepts 64 registers per read: ⌈1000 / 64⌉ = 16.
    let small = PlanLimits {
        max_registers: 64,
        ..l
    };
    let p = planned(&fields, &small);
    assert_eq!(p.requests_per_cycle(), 16);
    assert_eq!(run_min(&fields, &small), 16);

    // Merging off: one request per field.
    let off = PlanLimits { merge: false, ..l };
    let p = planned(&fields, &off);
    assert_eq!(p.requests_per_cycle(), 1000);
    assert_eq!(run_min(&fields, &off), 1000);

    // A device limit above the protocol's is capped at 125.
    let big = PlanLimits {
        max_registers: 500,
        ..l
    };
    assert_eq!(planned(&fields, &big).requests_per_cycle(), 8);
}

#[test]
fn overlapping_fields_share_one_request() {
    // An f32 at 10, its low word as a u16, its high word as an i16, a u32 at 11, and
    // a bit of register 12.
    let fields = [reg(10, 2), reg(11, 1), reg(10, 1), reg(11, 2), reg(12, 1)];
    let l = limits(10);
    let p = planned(&fields, &l);
    assert_eq!(ranges(&p), [(Holding, 10, 3)]);
    assert_eq!(exhaustive_min(&fields, &l), 1);

    // Without merging, a field inside another is served by that field's request, and
    // the u32 needs its own.
    let off = PlanLimits { merge: false, ..l };
    let p = planned(&fields, &off);
    assert_eq!(ranges(&p), [(Holding, 10, 2), (Holding, 11, 2)]);
    assert_eq!(exhaustive_min(&fields, &off), 2);
}

#[test]
fn a_bit_and_a_u16_in_one_register_are_read_once() {
    let fields = [reg(40, 1), reg(40, 1)];
    for merge in [true, false] {
        let l = PlanLimits {
            merge,
            ..limits(10)
        };
        let p = planned(&fields, &l);
        assert_eq!(ranges(&p), [(Holding, 40, 1)]);
        assert_eq!(p.requests()[0].slots.len(), 2);
        assert!(p.requests()[0].slots.iter().all(|s| s.offset == 0));
    }
}

#[test]
fn kinds_are_never_mixed() {
    let mut fields: Vec<Span> = (0..10).map(|a| span(Coil, a, 1)).collect();
    fields.extend((0..5).map(|a| span(Discrete, a, 1)));
    fields.extend([reg(0, 1), span(Input, 0, 1), reg(1, 2), span(Input, 3, 2)]);
    let l = limits(10);
    let p = planned(&fields, &l);
    assert_eq!(
        ranges(&p),
        [
            (Coil, 0, 10),
            (Discrete, 0, 5),
            (Holding, 0, 3),
            (Input, 0, 5)
        ]
    );
    assert_eq!(p.requests_per_cycle(), run_min(&fields, &l));
    assert_eq!(
        p.requests()
            .iter()
            .map(|r| r.function_code())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
}

#[test]
fn a_four_register_value_is_never_split() {
    // 123 u16 then an f64 at 123..127: 127 registers in all, so two requests, and the
    // f64 wholly in the second.
    let mut fields: Vec<Span> = (0..123).map(|a| reg(a, 1)).collect();
    fields.push(reg(123, 4));
    let l = limits(10);
    let p = planned(&fields, &l);
    assert_eq!(ranges(&p), [(Holding, 0, 123), (Holding, 123, 4)]);
    assert_eq!(run_min(&fields, &l), 2);

    // Straddling the 125 boundary: 0..122 then an f64 at 122..126.
    let mut fields: Vec<Span> = (0..122).map(|a| reg(a, 1)).collect();
    fields.push(reg(122, 4));
    let p = planned(&fields, &l);
    assert_eq!(ranges(&p), [(Holding, 0, 122), (Holding, 122, 4)]);

    // A device capped at 64, with the f64 straddling register 64.
    let mut fields: Vec<Span> = (0..62).map(|a| reg(a, 1)).collect();
    fields.push(reg(62, 4));
    fields.extend((66..130).map(|a| reg(a, 1)));
    let small = PlanLimits {
        max_registers: 64,
        ..l
    };
    let p = planned(&fields, &small);
    assert_eq!(p.requests_per_cycle(), run_min(&fields, &small));
    assert_eq!(p.requests_per_cycle(), 3);
}

#[test]
fn coils_merge_up_to_two_thousand() {
    let fields: Vec<Span> = (0..2500).map(|a| span(Coil, a, 1)).collect();
    let l = limits(10);
    let p = planned(&fields, &l);
    assert_eq!(ranges(&p), [(Coil, 0, 2000), (Coil, 2000, 500)]);
    assert_eq!(run_min(&fields, &l), 2);
    let few = PlanLimits { max_bits: 100, ..l };
    assert_eq!(planned(&fields, &few).requests_per_cycle(), 25);
    // A gap of 15 bits is above the default max_gap of 10.
    let fields = [span(Discrete, 0, 1), span(Discrete, 16, 1)];
    assert_eq!(planned(&fields, &l).requests_per_cycle(), 2);
    assert_eq!(planned(&fields, &limits(15)).requests_per_cycle(), 1);
}

#[test]
fn the_last_addresses_plan_without_overflow() {
    let fields = [
        reg(65535, 1),
        reg(65534, 2),
        reg(65532, 4),
        span(Coil, 65535, 1),
        span(Input, 65535, 1),
    ];
    let p = planned(&fields, &limits(10));
    assert_eq!(
        ranges(&p),
        [(Coil, 65535, 1), (Holding, 65532, 4), (Input, 65535, 1)]
    );
    assert_eq!(p.requests()[1].end(), 65536);
}

#[test]
fn the_first_field_to_start_need_not_end_first() {
    // Cap 4, no gaps: A = [0,2), B = [1,5), C = [2,4). {A, C} and {B} is a minimum.
    let fields = [reg(0, 2), reg(1, 4), reg(2, 2)];
    let l = PlanLimits {
        max_registers: 4,
        max_gap: 0,
        ..PlanLimits::default()
    };
    let p = planned(&fields, &l);
    assert_eq!(p.requests_per_cycle(), 2);
    assert_eq!(exhaustive_min(&fields, &l), 2);
}

#[test]
fn slices_pick_each_fields_registers() {
    let fields = [reg(10, 2), reg(14, 1)];
    let p = planned(&fields, &limits(10));
    let r = &p.requests()[0];
    let answer = [1u16, 2, 3, 4, 5];
    let by_field: HashMap<usize, &[u16]> = r
        .slots
        .iter()
        .map(|s| (s.field as usize, r.slice(s, &answer).unwrap()))
        .collect();
    assert_eq!(by_field[&0], &[1, 2]);
    assert_eq!(by_field[&1], &[5]);
    assert_eq!(r.slice(&r.slots[1], &answer[..4]), None);
}

#[test]
fn impossible_fields_are_errors_not_panics() {
    assert_eq!(plan(&[reg(5, 0)], &limits(10)), Err(PlanError::Empty(0)));
    let err = plan(&[reg(1, 1), reg(65535, 2)], &limits(10)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field #1 (2 holding registers from address 65535) runs past address 65535"
    );
    let err = plan(&[reg(0, 126)], &limits(10)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field #0 needs 126 registers but a holding register request may read at most 125"
    );
    let zero = PlanLimits {
        max_registers: 0,
        ..PlanLimits::default()
    };
    assert!(matches!(
        plan(&[reg(0, 1)], &zero),
        Err(PlanError::TooLarge { cap: 0, .. })
    ));
    // Huge gaps and caps are fine.
    let wide = PlanLimits {
        max_gap: u16::MAX,
        max_registers: u16::MAX,
        max_bits: u16::MAX,
        merge: true,
    };
    let p = planned(
        &[
            reg(0, 1),
            reg(65535, 1),
            span(Coil, 0, 1),
            span(Coil, 65535, 1),
        ],
        &wide,
    );
    assert_eq!(p.requests_per_cycle(), 4);
    assert_eq!(plan(&[], &wide).map(|p| p.requests_per_cycle()), Ok(0));
}

#[test]
fn random_layouts_get_minimal_plans() {
    let mut rng = Rng(42);
    for case in 0..4000 {
        let n = 1 + rng.below(10) as usize;
        let near_end = rng.below(8) == 0;
        let fields: Vec<Span> = (0..n)
            .map(|_| {
                let kind = [Holding, Input, Coil][rng.below(3) as usize];
                let count = if kind.is_bit() {
                    1
                } else {
                    [1, 1, 2, 4, 1 + rng.below(6) as u16][rng.below(5) as usize]
                };
                let address = if near_end {
                    (65536 - u32::from(count) - rng.below(20) as u32) as u16
                } else {
                    rng.below(40) as u16
                };
                span(kind, address, count)
            })
            .collect();
        let l = PlanLimits {
            merge: rng.below(4) != 0,
            max_gap: rng.below(6) as u16,
            max_registers: 6 + rng.below(10) as u16,
            max_bits: 1 + rng.below(12) as u16,
        };
        let p = planned(&fields, &l);
        assert_eq!(
            p.requests_per_cycle(),
            exhaustive_min(&fields, &l),
            "case {case}: {fields:?} under {l:?}: {p:?}"
        );
    }
}

#[test]
fn random_disjoint_layouts_of_hundreds_of_fields_get_minimal_plans() {
    let mut rng = Rng(7);
    for case in 0..300 {
        let mut fields = Vec::new();
        let mut at = 0u32;
        for _ in 0..rng.below(400) {
            let count = [1u16, 2, 4][rng.below(3) as usize];
            at += [0, 0, 1, 3, 8, 15, 40][rng.below(7) as usize];
            if at + u32::from(count) > 65536 {
                break;
            }
            fields.push(reg(at as u16, count));
            at += u32::from(count);
        }
        let l = PlanLimits {
            merge: rng.below(5) != 0,
            max_gap: rng.below(20) as u16,
            max_registers: 4 + rng.below(122) as u16,
            max_bits: 2000,
        };
        let p = planned(&fields, &l);
        assert_eq!(
            p.requests_per_cycle(),
            run_min(&fields, &l),
            "case {case} under {l:?}"
        );
    }
}
