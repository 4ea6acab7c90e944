//! The read planner: a device's fields merged into the fewest read requests the
//! protocol, the device's limits and the gap rule allow.
//!
//! # Rules
//!
//! A request reads one register kind (coils, discrete inputs, holding or input
//! registers) from a start address for a count of at most the kind's cap: the protocol
//! limit (2000 bits, 125 registers) or the device's lower `max_bits_per_request` /
//! `max_registers_per_request`. A field is served by a request when it lies wholly
//! inside it, so a value is never split across two requests. With merging on, a
//! request may also read addresses no field inside it uses, but no run of such unused
//! addresses may be longer than `max_gap`. With merging off, every request reads exactly
//! the addresses of one field (a field lying inside another, such as a bit inside a
//! u16 or a u16 inside an f32, is served by that field's request).
//!
//! # Algorithm, and why the plan is minimal
//!
//! Per kind, fields are sorted by start address. Repeatedly take the unserved field
//! `f` that starts first, start a request at `f.start`, and end it at the largest field
//! end `b` for which `[f.start, b)` is within the cap and has no gap longer than
//! `max_gap` (counting every field that lies wholly inside, served or not). Every field
//! inside is now served.
//!
//! Some request of any valid plan must serve `f`. Moving that request's start up to
//! `f.start` keeps it valid and serving the same unserved fields: every field it loses
//! lies before `f.start` and ends by `f.end` (a field starting earlier and ending later
//! would contain `f`, and would have been served by a request that served `f` too), so
//! what it covered is covered by `f` itself. Among requests starting at `f.start`, the
//! unserved fields served are exactly those ending by `b`, so the greedy request, with
//! the largest `b`, serves a superset of any other's. By induction the greedy plan needs
//! no more requests than any valid plan. The tests check this against an exhaustive
//! search.
//!
//! With merging off the plan is one request per field range not contained in another
//! field's range, which is also the minimum: such a range can only be read by itself.

use std::cmp::Reverse;

use crate::types::{RegisterKind, MAX_READ_BITS, MAX_READ_REGISTERS};

/// The addresses one field occupies: what the planner must read for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    /// The register kind.
    pub kind: RegisterKind,
    /// Wire address of the first coil or register.
    pub address: u16,
    /// Coils or registers, at least 1.
    pub count: u16,
}

impl Span {
    /// One past the last address, which may be 65536.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

/// A device's limits on reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Merge fields into shared requests.
    pub merge: bool,
    /// Longest run of unused addresses one merged request may read.
    pub max_gap: u16,
    /// Most registers per request (capped at 125).
    pub max_registers: u16,
    /// Most bits per request (capped at 2000).
    pub max_bits: u16,
}

impl Default for PlanLimits {
    /// Merging on, gaps up to 10, the protocol's limits.
    fn default() -> Self {
        PlanLimits {
            merge: true,
            max_gap: 10,
            max_registers: MAX_READ_REGISTERS,
            max_bits: MAX_READ_BITS,
        }
    }
}

impl PlanLimits {
    /// The largest request of `kind`: the device's limit, never above the protocol's.
    pub fn cap(&self, kind: RegisterKind) -> u16 {
        let limit = if kind.is_bit() {
            self.max_bits
        } else {
            self.max_registers
        };
        limit.min(kind.max_per_read())
    }
}

/// Where one field's data sits in a request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Index of the field in the slice given to [`plan`] (a plan holds a slot per field:
    /// four bytes rather than eight keep it small for a device of thousands of fields).
    pub field: u32,
    /// Position of its first coil or register in the answer.
    pub offset: u16,
    /// Coils or registers it occupies.
    pub count: u16,
}

/// One read request of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The register kind read.
    pub kind: RegisterKind,
    /// Wire address of the first coil or register.
    pub address: u16,
    /// Coils or registers read.
    pub count: u16,
    /// The fields decoded from the answer; each field of the plan is in exactly one
    /// request.
    pub slots: Vec<Slot>,
}

impl ReadRequest {
    /// The function code of the read: 1, 2, 3 or 4.
    pub fn function_code(&self) -> u8 {
        self.kind.read_function_code()
    }

    /// One past the last address read.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }

    /// A slot's part of the answer (`None` if the answer is too short).
    pub fn slice<'a, T>(&self, slot: &Slot, answer: &'a [T]) -> Option<&'a [T]> {
        let start = usize::from(slot.offset);
        answer.get(start..start + usize::from(slot.count))
    }
}

/// The reads of one poll cycle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadPlan {
    requests: Vec<ReadRequest>,
    fields: usize,
}

impl ReadPlan {
    /// The requests, by kind (coils, discrete inputs, holding, input) and address.
    pub fn requests(&self) -> &[ReadRequest] {
        &self.requests
    }

    /// The requests, by value.
    pub fn into_requests(self) -> Vec<ReadRequest> {
        self.requests
    }

    /// Requests one poll cycle sends (for logs and metrics).
    pub fn requests_per_cycle(&self) -> usize {
        self.requests.len()
    }

    /// Requests a plan reading each field on its own would send: one per field.
    pub fn naive_requests(&self) -> usize {
        self.fields
    }

    /// Coils and registers read per cycle, unused gap addresses included.
    pub fn addresses_read(&self) -> u64 {
        self.requests.iter().map(|r| u64::from(r.count)).sum()
    }
}

/// Requests a plan reading each field on its own would send, for comparison in logs and
/// benchmarks: one per field.
pub fn naive_request_count(fields: &[Span]) -> usize {
    fields.len()
}

/// Why fields cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A field of no size.
    #[error("field #{0} occupies no address")]
    Empty(usize),
    /// A field running past address 65535.
    #[error("field #{field} ({count} {kind}s from address {address}) runs past address 65535")]
    PastEnd {
        /// Index of the field.
        field: usize,
        /// Its kind.
        kind: RegisterKind,
        /// Its first address.
        address: u16,
        /// Its size.
        count: u16,
    },
    /// A field larger than one request may be.
    #[error("field #{field} needs {count} {}s but a {kind} request may read at most {cap}", .kind.unit_name())]
    TooLarge {
        /// Index of the field.
        field: usize,
        /// Its kind.
        kind: RegisterKind,
        /// Its size.
        count: u16,
        /// The request cap.
        cap: u16,
    },
    /// More fields than a slot can number (2^32).
    #[error("{0} fields are more than one device may have")]
    TooMany(usize),
}

/// A field as the planner sees it: half-open address range and index.
#[derive(Debug, Clone, Copy)]
struct Item {
    start: u32,
    end: u32,
    field: usize,
}

/// Plans the reads for `fields` (indexes in the plan refer to this slice).
pub fn plan(fields: &[Span], limits: &PlanLimits) -> Result<ReadPlan, PlanError> {
    if u32::try_from(fields.len()).is_err() {
        return Err(PlanError::TooMany(fields.len()));
    }
    let mut requests = Vec::new();
    for kind in RegisterKind::ALL {
        let cap = limits.cap(kind);
        let mut items = Vec::new();
        for (i, f) in fields.iter().enumerate().filter(|(_, f)| f.kind == kind) {
            if f.count == 0 {
                return Err(PlanError::Empty(i));
            }
            if f.end() > 65536 {
                return Err(PlanError::PastEnd {
                    field: i,
                    kind,
                    address: f.address,
                    count: f.count,
                });
            }
            if f.count > cap {
                return Err(PlanError::TooLarge {
                    field: i,
                    kind,
                    count: f.count,
                    cap,
                });
            }
            items.push(Item {
                start: f.address.into(),
                end: f.end(),
                field: i,
            });
        }
        // By start; at one start the longest first, so a field that contains the next
        // ones comes before them.
        items.sort_by_key(|it| (it.start, Reverse(it.end), it.field));
        if limits.merge {
            merged(
                kind,
                &items,
                cap.into(),
                limits.max_gap.into(),
                &mut requests,
            );
        } else {
            unmerged(kind, &items, &mut requests);
        }
    }
    Ok(ReadPlan {
        requests,
        fields: fields.len(),
    })
}

fn slot(it: &Item, request_start: u32) -> Slot {
    Slot {
        // `plan` refuses more fields than a u32 numbers.
        field: it.field as u32,
        // Both fit in u16: the offset is below the cap, the count at most the cap.
        offset: (it.start - request_start) as u16,
        count: (it.end - it.start) as u16,
    }
}

fn request(kind: RegisterKind, start: u32, end: u32, slots: Vec<Slot>) -> ReadRequest {
    ReadRequest {
        kind,
        address: start as u16,
        count: (end - start) as u16,
        slots,
    }
}

/// Whether `[a, b)` leaves no run of more than `max_gap` addresses unused by the fields
/// of `window` (sorted by start, all starting at or after `a`) that lie inside it.
fn gaps_ok(window: &[Item], a: u32, b: u32, max_gap: u32) -> bool {
    let mut covered_to = a;
    for it in window.iter().filter(|it| it.end <= b) {
        if it.start > covered_to && it.start - covered_to > max_gap {
            return false;
        }
        covered_to = covered_to.max(it.end);
    }
    covered_to >= b
}

fn merged(kind: RegisterKind, items: &[Item], cap: u32, max_gap: u32, out: &mut Vec<ReadRequest>) {
    let mut served = vec![false; items.len()];
    let mut next = 0;
    loop {
        while next < items.len() && served[next] {
            next += 1;
        }
        let Some(first) = items.get(next) else { break };
        let a = first.start;
        let limit = a + cap;
        // Every field starting in [a, a + cap), served or not: only they can lie
        // inside a request starting at a.
        let lo = items.partition_point(|it| it.start < a);
        let hi = items.partition_point(|it| it.start < limit);
        let window = &items[lo..hi];
        let mut ends: Vec<u32> = window
            .iter()
            .map(|it| it.end)
            .filter(|&e| e >= first.end && e <= limit)
            .collect();
        ends.sort_unstable_by(|x, y| y.cmp(x));
        ends.dedup();
        // [a, first.end) is always valid, so the search cannot fail.
        let b = ends
            .into_iter()
            .find(|&b| gaps_ok(window, a, b, max_gap))
            .unwrap_or(first.end);
        let mut slots = Vec::new();
        for (j, it) in items.iter().enumerate().take(hi).skip(lo) {
            if it.end <= b && !served[j] {
                served[j] = true;
                slots.push(slot(it, a));
            }
        }
        out.push(request(kind, a, b, slots));
    }
}

fn unmerged(kind: RegisterKind, items: &[Item], out: &mut Vec<ReadRequest>) {
    // The request with the largest end so far: it contains every later field that
    // ends by then, since it starts no later.
    let mut widest: Option<usize> = None;
    for it in items {
        match widest {
            Some(w) if it.end <= out[w].end() => {
                let s = slot(it, out[w].address.into());
                out[w].slots.push(s);
            }
            _ => {
                out.push(request(kind, it.start, it.end, vec![slot(it, it.start)]));
                widest = Some(out.len() - 1);
            }
        }
    }
}
