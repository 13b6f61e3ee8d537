//! The engine's own state record (stream time, counters, population, tiers, purchase
//! model) and the restore of an engine from it and its customers' records.

use super::state::{Customer, NEVER, UNSCHEDULED};
use super::{bgnbd, clock, codec, index, population, tiers, Engine};
use crate::config::EngineSettings;
use crate::time::Timestamp;
use std::cmp::Reverse;

impl Engine {
    /// Appends the engine's own state record (stream time, population baseline, value
    /// tiers, counters; version byte first) to `out`.
    pub fn encode_engine(&self, out: &mut Vec<u8>) {
        let mut w = codec::Writer::start(out);
        w.i64(self.max_event_time.0);
        w.i64(self.stream_time.0);
        w.i64(self.watermark_limit.0);
        for v in self.stats.clone().counters_mut() {
            w.u64(*v);
        }
        self.population.encode(&mut w);
        self.tiers.encode(&mut w);
        self.model.encode(&mut w);
        self.recent.encode(&mut w);
        for d in self.population.slot_days() {
            w.i64(*d);
        }
        w.f64(self.basket_spread.unwrap_or(0.0));
    }

    /// The state record of every customer, in the engine's order.
    pub fn encode_customers(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.customers.iter().filter(|c| !c.id.is_empty()).map(|c| {
            let mut out = Vec::with_capacity(448);
            c.encode(&mut out);
            out
        })
    }

    /// An engine rebuilt from its records: the engine record and every customer's, in
    /// the order [`Engine::encode_customers`] gave them. It continues exactly as the
    /// engine that wrote them would have. The index and the deadline queue are rebuilt.
    pub fn restore<B: AsRef<[u8]>>(
        cfg: EngineSettings,
        engine: &[u8],
        customers: impl IntoIterator<Item = B>,
    ) -> Result<Engine, codec::CodecError> {
        let mut e = Engine::new(cfg);
        let horizon = e.horizon_ms();
        let mut r = codec::Reader::start(engine)?;
        e.max_event_time = Timestamp(r.i64()?);
        e.stream_time = Timestamp(r.i64()?);
        e.watermark_limit = Timestamp(r.i64()?);
        for v in e.stats.counters_mut() {
            *v = r.u64()?;
        }
        e.population = population::Population::decode(&mut r)?;
        e.tiers = tiers::Tiers::decode(&mut r)?;
        // Records written before the purchase model end here: the prior, fitted again at
        // the first chance.
        if !r.rest().is_empty() {
            e.model = bgnbd::Model::decode(&mut r)?;
        }
        // Records written before the agreed event time: their latest event time is taken
        // as agreed.
        e.recent = if r.rest().is_empty() {
            if e.max_event_time == NEVER {
                clock::Recent::default()
            } else {
                clock::Recent::filled(e.max_event_time.0)
            }
        } else {
            clock::Recent::decode(&mut r)?
        };
        // Records written before population slots had days: derived from the latest day.
        let slot_days = if r.rest().is_empty() {
            None
        } else {
            let mut days = [0i64; population::DAYS];
            for d in days.iter_mut() {
                *d = r.i64()?;
            }
            Some(days)
        };
        e.population.set_slot_days(slot_days);
        // Records written before the store's basket spread: none, learnt at the next fit.
        if !r.rest().is_empty() {
            let v = r.f64()?;
            e.basket_spread = (v > 0.0).then_some(v);
        }
        r.end()?;
        for bytes in customers {
            let c = Customer::decode(bytes.as_ref())?;
            let hash = index::hash(&c.id);
            if e.find(hash, &c.id).is_some() {
                return Err(codec::CodecError::Invalid("a customer recorded twice"));
            }
            let idx = e.customers.len();
            let scheduled = c.scheduled;
            e.idle
                .push(Reverse((c.last_seen.0.saturating_add(horizon), idx as u32)));
            e.customers.push(c);
            let customers = &e.customers;
            e.index
                .insert(hash, idx as u32, |i| index::hash(&customers[i as usize].id));
            if scheduled != UNSCHEDULED {
                e.deadlines.schedule(idx as u32, scheduled, UNSCHEDULED);
            }
        }
        Ok(e)
    }
}
