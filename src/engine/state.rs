//! Per-customer state: compact and fixed-size, since it is what limits how many customers
//! one instance holds. Everything is order-independent where it can be (min/max/sums), so
//! that events permuted within the allowed lateness leave the same state behind.

use compact_str::CompactString;

use super::lifecycle::Episode;
use super::window::Ring;
use crate::time::Timestamp;

/// "Never" for optional instants (kept as plain `i64` to stay compact).
pub const NEVER: Timestamp = Timestamp(i64::MIN);
/// "Not scheduled".
pub const UNSCHEDULED: Timestamp = Timestamp(i64::MAX);

/// How many recent event ids a customer remembers for de-duplication.
pub const DEDUP_SLOTS: usize = 8;
/// How many open tickets are tracked individually.
pub const TICKET_SLOTS: usize = 4;

/// A 32-bit fingerprint of an id, never 0 (0 marks an empty slot).
pub fn fingerprint(id: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) as u32) | 1
}

/// The last [`DEDUP_SLOTS`] event-id fingerprints of a customer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dedup {
    fps: [u32; DEDUP_SLOTS],
    next: u8,
}

impl Dedup {
    /// True if `fp` was seen among the remembered ids.
    pub fn seen(&self, fp: u32) -> bool {
        self.fps.contains(&fp)
    }
    /// Remembers `fp`, forgetting the oldest.
    pub fn remember(&mut self, fp: u32) {
        self.fps[self.next as usize] = fp;
        self.next = ((self.next as usize + 1) % DEDUP_SLOTS) as u8;
    }
}

/// Tickets: up to [`TICKET_SLOTS`] by fingerprint, plus a count of open tickets beyond.
///
/// Each slot is a last-writer-wins register in event time: the state (open or resolved)
/// of the ticket's latest event, with its minute; on a tie, resolved wins. A resolve for
/// an unknown ticket leaves a resolved tombstone, so an `opened` that arrives after its
/// `resolved` (out of order, within the lateness) does not count as open. The final
/// state therefore does not depend on arrival order, as long as no more than
/// [`TICKET_SLOTS`] tickets are in play at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenTickets {
    slots: [(u32, u32); TICKET_SLOTS],
    overflow: u8,
}

const OPEN_BIT: u32 = 1 << 31;

fn minute(t: Timestamp) -> u32 {
    (t.0.div_euclid(60_000)).clamp(1, i64::from(OPEN_BIT - 1)) as u32
}

impl OpenTickets {
    fn slot_of(&mut self, fp: u32) -> Option<&mut (u32, u32)> {
        self.slots.iter_mut().find(|s| s.0 == fp)
    }

    /// A slot to write a new ticket into: an empty one, else the oldest resolved one.
    fn free_slot(&mut self) -> Option<&mut (u32, u32)> {
        if let Some(i) = self.slots.iter().position(|s| s.0 == 0) {
            return Some(&mut self.slots[i]);
        }
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.1 & OPEN_BIT == 0)
            .min_by_key(|(_, s)| s.1)
            .map(|(i, _)| i)?;
        Some(&mut self.slots[oldest])
    }

    /// Records a ticket opened (or reopened) at `t`.
    pub fn open(&mut self, fp: u32, t: Timestamp) {
        let m = minute(t);
        if let Some(s) = self.slot_of(fp) {
            let last = s.1 & !OPEN_BIT;
            if s.1 & OPEN_BIT != 0 {
                s.1 = OPEN_BIT | last.max(m);
            } else if m > last {
                s.1 = OPEN_BIT | m;
            }
            return;
        }
        match self.free_slot() {
            Some(s) => *s = (fp, OPEN_BIT | m),
            None => self.overflow = self.overflow.saturating_add(1),
        }
    }

    /// Records a ticket resolved at `t`.
    pub fn resolve(&mut self, fp: u32, t: Timestamp) {
        let m = minute(t);
        if let Some(s) = self.slot_of(fp) {
            let last = s.1 & !OPEN_BIT;
            if s.1 & OPEN_BIT == 0 {
                s.1 = last.max(m);
            } else if m >= last {
                s.1 = m;
            }
            return;
        }
        if self.overflow > 0 {
            self.overflow -= 1;
        } else if let Some(s) = self.free_slot() {
            if s.0 == 0 || s.1 < m {
                *s = (fp, m);
            }
        }
    }

    fn open_minutes(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .filter(|s| s.0 != 0 && s.1 & OPEN_BIT != 0)
            .map(|s| s.1 & !OPEN_BIT)
    }

    /// Tickets open now.
    pub fn count(&self) -> u32 {
        self.open_minutes().count() as u32 + u32::from(self.overflow)
    }
    /// Tracked open tickets opened before `cutoff` (left unresolved).
    pub fn opened_before(&self, cutoff: Timestamp) -> u32 {
        self.opened_between(Timestamp(i64::MIN), cutoff)
    }
    /// Tracked open tickets opened at or after `from` and before `cutoff`.
    pub fn opened_between(&self, from: Timestamp, cutoff: Timestamp) -> u32 {
        let (f, c) = (if from.0 <= 0 { 0 } else { minute(from) }, minute(cutoff));
        self.open_minutes().filter(|m| *m >= f && *m < c).count() as u32
    }
    /// The earliest opening instant among open tickets opened at or after `from` and
    /// before `cutoff`.
    pub fn oldest_opened_between(&self, from: Timestamp, cutoff: Timestamp) -> Option<Timestamp> {
        let (f, c) = (if from.0 <= 0 { 0 } else { minute(from) }, minute(cutoff));
        self.open_minutes()
            .filter(|m| *m >= f && *m < c)
            .min()
            .map(|m| Timestamp(i64::from(m) * 60_000))
    }
    /// The earliest opening instant among open tickets opened at or after `after`.
    pub fn next_opened_at_or_after(&self, after: Timestamp) -> Option<Timestamp> {
        let a = minute(after);
        self.open_minutes()
            .filter(|m| *m >= a)
            .min()
            .map(|m| Timestamp(i64::from(m) * 60_000))
    }
}

/// Everything the engine keeps about one customer.
#[derive(Debug, Clone)]
pub struct Customer {
    /// The customer id (inline up to 24 bytes).
    pub id: CompactString,
    /// Rolling windows.
    pub ring: Ring,
    /// Earliest event time seen.
    pub first_seen: Timestamp,
    /// Latest event time seen.
    pub last_seen: Timestamp,
    /// Earliest order.
    pub first_order: Timestamp,
    /// Second-earliest order.
    pub second_order: Timestamp,
    /// Latest order.
    pub last_order: Timestamp,
    /// Latest engagement event.
    pub last_engagement: Timestamp,
    /// Time of the latest NPS answer.
    pub nps_at: Timestamp,
    /// When this customer is next due for evaluation without an event.
    pub scheduled: Timestamp,
    /// Orders placed, ever.
    pub orders_total: u32,
    /// Latest NPS score, 255 when none.
    pub nps: u8,
    /// Value-histogram bin this customer is counted in (see `tiers`).
    pub value_bin: u16,
    /// First-to-second-order gap bin this customer is counted in, 255 when none.
    pub gap_bin: u8,
    /// Recent event ids.
    pub dedup: Dedup,
    /// Open tickets.
    pub tickets: OpenTickets,
    /// The alert episode.
    pub episode: Episode,
}

impl Customer {
    /// A customer never seen before.
    pub fn new(id: &str) -> Customer {
        Customer {
            id: CompactString::new(id),
            ring: Ring::default(),
            first_seen: UNSCHEDULED,
            last_seen: NEVER,
            first_order: NEVER,
            second_order: NEVER,
            last_order: NEVER,
            last_engagement: NEVER,
            nps_at: NEVER,
            scheduled: UNSCHEDULED,
            orders_total: 0,
            nps: 255,
            value_bin: 0,
            gap_bin: 255,
            dedup: Dedup::default(),
            tickets: OpenTickets::default(),
            episode: Episode::default(),
        }
    }

    /// Records an order at `t`, keeping first/second/last order order-independent.
    pub fn record_order(&mut self, t: Timestamp) {
        self.orders_total = self.orders_total.saturating_add(1);
        if self.first_order == NEVER || t < self.first_order {
            self.second_order = self.first_order;
            self.first_order = t;
        } else if self.second_order == NEVER || t < self.second_order {
            self.second_order = t;
        }
        self.last_order = self.last_order.max(t);
    }

    /// Records an NPS answer; the latest answer wins (ties: the lower score).
    pub fn record_nps(&mut self, t: Timestamp, score: u8) {
        if t > self.nps_at || (t == self.nps_at && score < self.nps) {
            self.nps_at = t;
            self.nps = score;
        }
    }

    /// Heap bytes owned beyond `size_of::<Customer>()` (long ids only).
    pub fn heap_bytes(&self) -> usize {
        if self.id.is_heap_allocated() {
            self.id.capacity()
        } else {
            0
        }
    }
}

use super::codec::{CodecError, Reader, Writer};

impl Customer {
    /// Appends this customer's state record (version byte first) to `out`. Instants are
    /// written relative to the latest event (`last_seen`), which leads.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.id.len() + MAX_RECORD_BEYOND_ID);
        let mut w = Writer::start(out);
        w.short_str(&self.id);
        let base = self.last_seen.0;
        w.ivar(base);
        for t in [
            self.first_seen,
            self.first_order,
            self.second_order,
            self.last_order,
            self.last_engagement,
            self.nps_at,
            self.scheduled,
        ] {
            w.instant(t.0, base);
        }
        w.var(self.orders_total.into());
        w.u8(self.nps);
        w.var(self.value_bin.into());
        w.u8(self.gap_bin);
        self.ring.encode(&mut w);
        w.u8(self.dedup.next);
        w.u8(used_mask(self.dedup.fps.iter().map(|fp| *fp != 0)));
        for fp in self.dedup.fps.iter().filter(|fp| **fp != 0) {
            w.u32(*fp);
        }
        w.u8(used_mask(self.tickets.slots.iter().map(|s| *s != (0, 0))));
        for (a, b) in self.tickets.slots.iter().filter(|s| **s != (0, 0)) {
            w.u32(*a);
            w.u32(*b);
        }
        w.u8(self.tickets.overflow);
        let e = &self.episode;
        // Flags: open, then which of the id and the last alert's time are not 0 (none
        // before the first episode).
        w.u8(u8::from(e.open)
            | u8::from(e.alert_id != 0) << 1
            | u8::from(e.last_alert_at.0 != 0) << 2);
        if e.alert_id != 0 {
            w.u64(e.alert_id);
        }
        if e.last_alert_at.0 != 0 {
            w.instant(e.last_alert_at.0, base);
        }
        w.var(e.sequence.into());
        w.u8(e.active);
        w.u8(e.announced);
        // risk (0..=3) and tier (0..=3) share the byte
        w.u8((e.announced_risk & 0x0f) | (e.announced_tier << 4));
    }

    /// A customer from its state record (version 3, or 2 written by older builds).
    pub fn decode(bytes: &[u8]) -> Result<Customer, CodecError> {
        let mut r = Reader::start(bytes)?;
        if r.version() == 2 {
            return Customer::decode_v2(r);
        }
        let id = r.short_str()?;
        let mut c = Customer::new(id);
        let base = r.ivar()?;
        c.last_seen = Timestamp(base);
        for t in [
            &mut c.first_seen,
            &mut c.first_order,
            &mut c.second_order,
            &mut c.last_order,
            &mut c.last_engagement,
            &mut c.nps_at,
            &mut c.scheduled,
        ] {
            *t = Timestamp(r.instant(base)?);
        }
        c.orders_total = r.var_as()?;
        c.nps = r.u8()?;
        c.value_bin = r.var_as()?;
        c.gap_bin = r.u8()?;
        c.ring = super::window::Ring::decode(&mut r)?;
        c.dedup.next = r.u8()?;
        if c.dedup.next as usize >= DEDUP_SLOTS {
            return Err(CodecError::Invalid("dedup position out of range"));
        }
        let used = r.u8()?;
        for (i, fp) in c.dedup.fps.iter_mut().enumerate() {
            if used & 1 << i != 0 {
                *fp = r.u32()?;
            }
        }
        let used = r.u8()?;
        if used >> TICKET_SLOTS != 0 {
            return Err(CodecError::Invalid("a ticket slot out of range"));
        }
        for (i, slot) in c.tickets.slots.iter_mut().enumerate() {
            if used & 1 << i != 0 {
                *slot = (r.u32()?, r.u32()?);
            }
        }
        c.tickets.overflow = r.u8()?;
        let e = &mut c.episode;
        let flags = r.u8()?;
        if flags > 7 {
            return Err(CodecError::Invalid("episode flags"));
        }
        e.open = flags & 1 != 0;
        if flags & 2 != 0 {
            e.alert_id = r.u64()?;
        }
        if flags & 4 != 0 {
            e.last_alert_at = Timestamp(r.instant(base)?);
        }
        e.sequence = r.var_as()?;
        e.active = r.u8()?;
        e.announced = r.u8()?;
        let risk_and_tier = r.u8()?;
        e.announced_risk = risk_and_tier & 0x0f;
        e.announced_tier = risk_and_tier >> 4;
        r.end()?;
        Ok(c)
    }

    /// Version 2: every field fixed-width, in declaration order.
    fn decode_v2(mut r: Reader<'_>) -> Result<Customer, CodecError> {
        let id = r.str()?;
        let mut c = Customer::new(id);
        c.ring = super::window::Ring::decode(&mut r)?;
        for t in [
            &mut c.first_seen,
            &mut c.last_seen,
            &mut c.first_order,
            &mut c.second_order,
            &mut c.last_order,
            &mut c.last_engagement,
            &mut c.nps_at,
            &mut c.scheduled,
        ] {
            *t = Timestamp(r.i64()?);
        }
        c.orders_total = r.u32()?;
        c.nps = r.u8()?;
        c.value_bin = r.u16()?;
        c.gap_bin = r.u8()?;
        for fp in &mut c.dedup.fps {
            *fp = r.u32()?;
        }
        c.dedup.next = r.u8()?;
        if c.dedup.next as usize >= DEDUP_SLOTS {
            return Err(CodecError::Invalid("dedup position out of range"));
        }
        for slot in &mut c.tickets.slots {
            *slot = (r.u32()?, r.u32()?);
        }
        c.tickets.overflow = r.u8()?;
        let e = &mut c.episode;
        e.alert_id = r.u64()?;
        e.last_alert_at = Timestamp(r.i64()?);
        e.sequence = r.u16()?;
        e.active = r.u8()?;
        e.announced = r.u8()?;
        e.announced_risk = r.u8()?;
        e.open = r.bool()?;
        r.end()?;
        Ok(c)
    }
}

/// The longest a version 3 record is beyond its id's bytes (every field at its widest).
const MAX_RECORD_BEYOND_ID: usize = 512;

/// A bit per slot, set where the slot is in use (at most 8 slots).
fn used_mask(used: impl Iterator<Item = bool>) -> u8 {
    used.enumerate()
        .fold(0, |m, (i, u)| if u { m | 1 << i } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::window::{Bucket, RING};
    use proptest::prelude::*;

    fn instant() -> impl Strategy<Value = Timestamp> {
        prop_oneof![
            Just(NEVER),
            Just(UNSCHEDULED),
            Just(Timestamp(0)),
            any::<i64>().prop_map(Timestamp),
            (1_700_000_000_000i64..1_900_000_000_000).prop_map(Timestamp),
            (1_700_000_000i64..1_900_000_000).prop_map(|s| Timestamp(s * 1000)),
        ]
    }

    fn bucket() -> impl Strategy<Value = Bucket> {
        let float = prop_oneof![
            Just(0.0f32),
            Just(-0.0f32),
            any::<u32>().prop_map(f32::from_bits),
            -10_000.0f32..10_000.0,
        ];
        let count = (
            any::<u16>(),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
        );
        prop_oneof![
            Just(Bucket::default()),
            (float.clone(), float, count)
                .prop_map(|(v, d, counts)| Bucket::from_fields(v, d, counts)),
        ]
    }

    prop_compose! {
        fn customer()(
            id in "[a-z0-9<>&-]{0,40}",
            buckets in proptest::collection::vec(bucket(), RING),
            head in prop_oneof![Just(i32::MIN), any::<i32>()],
            times in proptest::collection::vec(instant(), 8),
            last_alert_at in instant(),
            counts in (any::<u32>(), any::<u8>(), any::<u16>(), any::<u8>()),
            fps in proptest::collection::vec(prop_oneof![Just(0u32), any::<u32>()], DEDUP_SLOTS),
            next in 0..DEDUP_SLOTS as u8,
            slots in proptest::collection::vec(prop_oneof![Just((0u32, 0u32)), any::<(u32, u32)>()], TICKET_SLOTS),
            overflow in any::<u8>(),
            episode in (prop_oneof![Just(0u64), any::<u64>()], any::<u16>(), (any::<u8>(), any::<u8>(), 0u8..16, 0u8..16), any::<bool>()),
        ) -> Customer {
            let mut c = Customer::new(&id);
            c.ring = crate::engine::window::Ring::from_parts(buckets.try_into().unwrap(), head);
            [c.first_seen, c.last_seen, c.first_order, c.second_order, c.last_order,
                c.last_engagement, c.nps_at, c.scheduled] = times.try_into().unwrap();
            (c.orders_total, c.nps, c.value_bin, c.gap_bin) = counts;
            c.dedup = Dedup { fps: fps.try_into().unwrap(), next };
            c.tickets = OpenTickets { slots: slots.try_into().unwrap(), overflow };
            let (alert_id, sequence, (active, announced, announced_risk, announced_tier), open) = episode;
            c.episode = Episode { alert_id, last_alert_at, sequence, active, announced, announced_risk, announced_tier, open };
            c
        }
    }

    proptest! {
        #[test]
        fn a_customer_record_gives_back_every_field_bit_for_bit(c in customer()) {
            let mut bytes = Vec::new();
            c.encode(&mut bytes);
            prop_assert_eq!(bytes[0], super::super::codec::VERSION);
            let back = Customer::decode(&bytes).unwrap();
            // Debug shows every field; the bytes again catch what Debug cannot (NaN payloads).
            prop_assert_eq!(format!("{back:?}"), format!("{c:?}"));
            let mut again = Vec::new();
            back.encode(&mut again);
            prop_assert_eq!(again, bytes);
        }
    }

    #[test]
    fn customer_state_fits_its_budget() {
        // The budget is 512 resident bytes per customer, everything included: this
        // record (ring 260, id 24, instants 64, dedup 36, tickets 36, episode 24,
        // counters 8), about 10 bytes of index and 16-32 of deadline queue per customer.
        // `bench engine` measures the resident total; this keeps the record honest.
        assert!(
            std::mem::size_of::<Customer>() <= 456,
            "{}",
            std::mem::size_of::<Customer>()
        );
    }

    #[test]
    fn dedup_remembers_the_last_eight() {
        let mut d = Dedup::default();
        for i in 0..9 {
            d.remember(fingerprint(&format!("e{i}")));
        }
        assert!(!d.seen(fingerprint("e0")), "the oldest is forgotten");
        assert!((1..9).all(|i| d.seen(fingerprint(&format!("e{i}")))));
    }

    #[test]
    fn open_tickets_track_resolution_and_age() {
        let mut o = OpenTickets::default();
        for i in 0..6 {
            o.open(fingerprint(&format!("t{i}")), Timestamp(i * 3_600_000));
        }
        assert_eq!(o.count(), 6);
        o.open(fingerprint("t0"), Timestamp(0));
        assert_eq!(
            o.count(),
            6,
            "re-opening an open ticket does not double count"
        );
        o.resolve(fingerprint("t1"), Timestamp(10 * 3_600_000));
        o.resolve(fingerprint("unknown"), Timestamp(10 * 3_600_000));
        assert_eq!(o.count(), 4);
        // t0 is older than 2h; t1 was resolved; t2 opened exactly at the cutoff minute.
        assert_eq!(o.opened_before(Timestamp(2 * 3_600_000 + 1)), 1);
        assert_eq!(
            o.next_opened_at_or_after(Timestamp(3 * 3_600_000)),
            Some(Timestamp(3 * 3_600_000))
        );
    }

    #[test]
    fn ticket_state_does_not_depend_on_arrival_order() {
        let h = |n: i64| Timestamp(n * 3_600_000);
        let t = fingerprint("t");
        // opened 1h, resolved 2h, reopened 3h, resolved 4h
        let events: [(bool, i64); 4] = [(true, 1), (false, 2), (true, 3), (false, 4)];
        let play = |order: &[usize]| {
            let mut o = OpenTickets::default();
            for &i in order {
                let (open, at) = events[i];
                if open {
                    o.open(t, h(at))
                } else {
                    o.resolve(t, h(at))
                }
            }
            o
        };
        for order in [
            [0, 1, 2, 3],
            [3, 2, 1, 0],
            [1, 0, 3, 2],
            [2, 3, 0, 1],
            [1, 2, 0, 3],
        ] {
            assert_eq!(play(&order).count(), 0, "resolved in the end: {order:?}");
        }
        // without the last resolve it is open again, since 3h, in any order
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let o = play(&order);
            assert_eq!(o.count(), 1, "{order:?}");
            assert_eq!(o.next_opened_at_or_after(h(0)), Some(h(3)));
        }
    }

    #[test]
    fn order_bookkeeping_does_not_depend_on_arrival_order() {
        let mut a = Customer::new("c");
        let mut b = Customer::new("c");
        for t in [5, 1, 9, 3] {
            a.record_order(Timestamp(t));
        }
        for t in [1, 3, 5, 9] {
            b.record_order(Timestamp(t));
        }
        assert_eq!(
            (a.first_order, a.second_order, a.last_order, a.orders_total),
            (b.first_order, b.second_order, b.last_order, b.orders_total)
        );
        assert_eq!(a.second_order, Timestamp(3));
    }
}
