//! A small world of customers written for these tests only, independent of the
//! project's own generator (its own random numbers, its own habits): each customer has
//! an order rhythm, an engagement rate, a support-ticket rate, a basket, and a start
//! day; a `change` can alter the rhythm or the basket from a day on. Events stream day
//! by day as contract JSON lines, in time order, so that years of millions of events go
//! through `replay` without being held in memory.

use std::collections::{BinaryHeap, VecDeque};
use std::io::Read;

use churnsignal::time::{Timestamp, DAY_MS};

/// 2025-01-06, a Monday.
pub const START: Timestamp = Timestamp(1_736_121_600_000);

/// xorshift64*, seeded per customer and stream.
#[derive(Clone)]
pub struct Rand(u64);

impl Rand {
    pub fn new(seed: u64) -> Rand {
        Rand(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
    }
    pub fn u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn f(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.f() < p
    }
    /// Poisson count with mean `m` (inversion; m stays small here).
    pub fn poisson(&mut self, m: f64) -> u32 {
        let (l, mut k, mut p) = ((-m).exp(), 0, 1.0);
        loop {
            p *= self.f();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
    /// Gamma with integer shape `k` and the given mean (a sum of exponentials).
    pub fn erlang(&mut self, k: u32, mean: f64) -> f64 {
        let mut s = 0.0;
        for _ in 0..k {
            s -= (1.0 - self.f()).ln();
        }
        s * mean / f64::from(k)
    }
}

/// How a customer behaves.
#[derive(Debug, Clone)]
pub struct Habit {
    /// Mean days between orders (0: never orders).
    pub order_gap_days: f64,
    /// Gamma shape of the gaps (4: coefficient of variation 0.5).
    pub gap_shape: u32,
    /// Mean order value.
    pub basket: f64,
    /// Engagement events per weekday (weekends a third).
    pub engagement_per_day: f64,
    /// Tickets opened per day.
    pub tickets_per_day: f64,
    /// First active day.
    pub start_day: u32,
    /// From `day`, the order gap is multiplied by `gap_factor` and the basket by
    /// `basket_factor` (a drop); none for steady customers.
    pub change: Option<Change>,
}

/// A change of habit.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub day: u32,
    pub gap_factor: f64,
    pub basket_factor: f64,
}

/// Days of a shared holiday (everyone a third as active).
pub const HOLIDAY: std::ops::Range<u32> = 350..364;

struct Live {
    id: String,
    habit: Habit,
    rand: Rand,
    next_order: f64,
    /// Ticket events due later: (time ms, json)
    later: BinaryHeap<std::cmp::Reverse<(i64, String)>>,
    seq: u64,
}

/// The world's events as a byte stream of JSON lines.
pub struct World {
    customers: Vec<Live>,
    day: u32,
    days: u32,
    buf: VecDeque<u8>,
}

impl World {
    pub fn new(habits: Vec<(String, Habit)>, days: u32, seed: u64) -> World {
        let customers = habits
            .into_iter()
            .enumerate()
            .map(|(i, (id, habit))| {
                let mut rand = Rand::new(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9));
                let first = f64::from(habit.start_day) + rand.f();
                Live {
                    id,
                    next_order: if habit.order_gap_days > 0.0 {
                        first
                    } else {
                        f64::INFINITY
                    },
                    habit,
                    rand,
                    later: BinaryHeap::new(),
                    seq: 0,
                }
            })
            .collect();
        World {
            customers,
            day: 0,
            days,
            buf: VecDeque::new(),
        }
    }

    fn fill(&mut self) {
        let day = self.day;
        let weekend = matches!(day % 7, 5 | 6);
        let holiday = HOLIDAY.contains(&day);
        let mut lines: Vec<(i64, String)> = Vec::new();
        for c in &mut self.customers {
            let h = &c.habit;
            if day < h.start_day {
                continue;
            }
            let changed = h.change.filter(|ch| day >= ch.day);
            let at =
                |r: &mut Rand| START.0 + i64::from(day) * DAY_MS + (r.f() * DAY_MS as f64) as i64;
            // Orders: a renewal process; in the holiday most are put off.
            while c.next_order < f64::from(day + 1) {
                let t = START.0 + (c.next_order * DAY_MS as f64) as i64;
                let gap = h.order_gap_days * changed.map_or(1.0, |ch| ch.gap_factor);
                if holiday && c.rand.chance(0.7) {
                    c.next_order = f64::from(HOLIDAY.end) + c.rand.f() * 3.0;
                    continue;
                }
                c.seq += 1;
                let value = h.basket
                    * changed.map_or(1.0, |ch| ch.basket_factor)
                    * (0.7 + 0.6 * c.rand.f());
                let discount = if c.rand.chance(0.2) {
                    5.0 + 5.0 * c.rand.f()
                } else {
                    0.0
                };
                lines.push((
                    t,
                    format!(
                        r#"{{"event_id":"{id}-{s}","customer_id":"{id}","type":"order.placed","occurred_at":"{ts}","order_id":"{id}-o{s}","amount":{value:.2},"discount_pct":{discount:.1}}}"#,
                        id = c.id,
                        s = c.seq,
                        ts = Timestamp(t)
                    ),
                ));
                c.next_order += c.rand.erlang(h.gap_shape, gap).max(0.05);
            }
            // Engagement: Poisson per day, a third at weekends and in the holiday.
            let factor = if weekend || holiday { 1.0 / 3.0 } else { 1.0 };
            for _ in 0..c.rand.poisson(h.engagement_per_day * factor) {
                c.seq += 1;
                let kind = ["login", "feature_used", "email_opened"][(c.rand.u64() % 3) as usize];
                lines.push((
                    at(&mut c.rand),
                    format!(
                        r#"{{"event_id":"{id}-{s}","customer_id":"{id}","type":"engagement.{kind}","occurred_at":"{{TS}}"}}"#,
                        id = c.id,
                        s = c.seq
                    ),
                ));
            }
            // Tickets: routine ones of mixed priority, resolved within days, with CSAT
            // spread over 1..5; some escalated, some reopened.
            for _ in 0..c
                .rand
                .poisson(h.tickets_per_day * if weekend { 0.5 } else { 1.0 })
            {
                c.seq += 1;
                let t0 = at(&mut c.rand);
                let tid = format!("{}-t{}", c.id, c.seq);
                let r = c.rand.f();
                let priority = if r < 0.1 {
                    "low"
                } else if r < 0.7 {
                    "normal"
                } else if r < 0.95 {
                    "high"
                } else {
                    "urgent"
                };
                let category = ["technical", "billing", "other", "technical", "billing"]
                    [(c.rand.u64() % 5) as usize];
                let ev = |kind: &str, t: i64, extra: String, s: u64| {
                    (
                        t,
                        format!(
                            r#"{{"event_id":"{tid}-{s}","customer_id":"{id}","type":"ticket.{kind}","occurred_at":"{ts}","ticket_id":"{tid}"{extra}}}"#,
                            id = c.id,
                            ts = Timestamp(t)
                        ),
                    )
                };
                lines.push(ev(
                    "opened",
                    t0,
                    format!(r#","priority":"{priority}","category":"{category}""#),
                    0,
                ));
                let mut t = t0;
                if c.rand.chance(0.08) {
                    t += (c.rand.f() * DAY_MS as f64) as i64;
                    c.later
                        .push(std::cmp::Reverse(ev("escalated", t, String::new(), 1)));
                }
                let days = if c.rand.chance(0.8) {
                    3.0 * c.rand.f()
                } else {
                    3.0 + 5.0 * c.rand.f()
                };
                t += (days * DAY_MS as f64) as i64;
                let csat = |r: &mut Rand| {
                    let x = r.f();
                    if x < 0.05 {
                        1
                    } else if x < 0.12 {
                        2
                    } else if x < 0.25 {
                        3
                    } else if x < 0.55 {
                        4
                    } else {
                        5
                    }
                };
                let score = csat(&mut c.rand);
                c.later.push(std::cmp::Reverse(ev(
                    "resolved",
                    t,
                    format!(r#","csat":{score}"#),
                    2,
                )));
                if c.rand.chance(0.05) {
                    t += ((1.0 + 2.0 * c.rand.f()) * DAY_MS as f64) as i64;
                    c.later
                        .push(std::cmp::Reverse(ev("reopened", t, String::new(), 3)));
                    t += ((0.5 + c.rand.f()) * DAY_MS as f64) as i64;
                    c.later
                        .push(std::cmp::Reverse(ev("resolved", t, String::new(), 4)));
                }
            }
            let end = START.0 + i64::from(day + 1) * DAY_MS;
            while c.later.peek().is_some_and(|e| e.0 .0 < end) {
                let std::cmp::Reverse(e) = c.later.pop().unwrap();
                lines.push(e);
            }
        }
        lines.sort_by_key(|l| l.0);
        for (t, line) in lines {
            let line = line.replace("{TS}", &Timestamp(t).to_string());
            self.buf.extend(line.as_bytes());
            self.buf.push_back(b'\n');
        }
        self.day += 1;
    }
}

impl Read for World {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() && self.day < self.days {
            self.fill();
        }
        let n = out.len().min(self.buf.len());
        for (o, b) in out.iter_mut().zip(self.buf.drain(..n)) {
            *o = b;
        }
        Ok(n)
    }
}
