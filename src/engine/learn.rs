//! What the engine learns from each event: the customer's state and windows, the
//! population baseline, value tiers, the purchase model and the basket spread.

use super::population::{Activity, LogHistogram};
use super::state::{fingerprint, Customer, NEVER};
use super::window::{Added, Delta, Layout, TroubleKind, WindowView};
use super::{
    basket, bgnbd, cadence_bin, population, Engine, CADENCE_PRIOR_QUANTILE, MIN_CADENCE_SAMPLES,
};
use crate::event::{Category, Event, EventKind};
use crate::signals::{support_tension, PopulationView};
use crate::time::Timestamp;

impl Engine {
    pub(super) fn record(&mut self, idx: usize, e: &Event<'_>, fp: u32) {
        self.touch(idx);
        let t = e.occurred_at;
        let width = self.cfg.engine().bucket_ms();
        let c = &mut self.customers[idx];
        let is_order = matches!(e.kind, EventKind::OrderPlaced { .. });
        let old_cadence = if is_order { cadence_bin(c) } else { None };
        let old_gap = c.gap_bin;
        let mut delta = Delta::default();
        let (mut pop_orders, mut pop_engagement) = (0.0, 0.0);
        match &e.kind {
            EventKind::OrderPlaced {
                amount,
                discount_pct,
                ..
            } => {
                delta.value = *amount as f32;
                delta.discount_value = (*amount * *discount_pct / 100.0) as f32;
                delta.orders = 1;
                c.record_order(t);
                pop_orders = 1.0;
            }
            EventKind::OrderCancelled { amount, .. } => {
                delta.value = -(amount.unwrap_or(0.0) as f32)
            }
            EventKind::OrderRefunded { amount, .. } => delta.value = -(*amount as f32),
            EventKind::TicketOpened {
                ticket_id,
                priority,
                category,
            } => {
                delta.tickets = 1;
                delta.trouble = support_tension::opened_points(*priority, *category);
                if delta.trouble > 0 {
                    delta.kinds = TroubleKind::SevereOpening.one();
                }
                delta.requests = u8::from(*category == Category::DiscountRequest);
                c.tickets.open(fingerprint(ticket_id), t);
            }
            EventKind::TicketEscalated { priority, .. } => {
                delta.trouble = support_tension::escalated_points(*priority);
                delta.kinds = TroubleKind::Escalation.one();
            }
            EventKind::TicketReopened { ticket_id } => {
                delta.trouble = support_tension::REOPENED_POINTS;
                delta.kinds = TroubleKind::Reopening.one();
                c.tickets.open(fingerprint(ticket_id), t);
            }
            EventKind::TicketResolved { ticket_id, csat } => {
                delta.trouble = support_tension::resolved_points(*csat);
                if delta.trouble > 0 {
                    delta.kinds = TroubleKind::PoorCsat.one();
                }
                c.tickets.resolve(fingerprint(ticket_id), t);
            }
            EventKind::Engagement { .. } => {
                delta.engagement = 1;
                c.last_engagement = c.last_engagement.max(t);
                pop_engagement = 1.0;
            }
            EventKind::Nps { score } => {
                delta.engagement = 1;
                c.last_engagement = c.last_engagement.max(t);
                c.record_nps(t, *score);
                pop_engagement = 1.0;
            }
        }
        if c.ring.add(t, width, &delta) == Added::TooOld {
            self.stats.too_old_for_windows += 1;
        }
        c.dedup.remember(fp);
        c.first_seen = c.first_seen.min(t);
        c.last_seen = c.last_seen.max(t);
        // population distributions: replace this customer's contribution (only an
        // order can change it)
        let new_cadence = if is_order { cadence_bin(c) } else { None };
        if is_order && new_cadence != old_cadence {
            if let Some(b) = old_cadence {
                self.population.cadence.remove(b);
            }
            if let Some(b) = new_cadence {
                self.population.cadence.add(b);
            }
        }
        if is_order && c.second_order != NEVER {
            let gap = LogHistogram::bin_of(c.second_order.days_since(c.first_order));
            if gap != old_gap {
                if old_gap != 255 {
                    self.population.second_order_gap.remove(old_gap);
                }
                self.population.second_order_gap.add(gap);
                c.gap_bin = gap;
            }
        }
        // An event dated further ahead of the agreed event time than the population
        // keeps days (an event dated "now" inside a backfill) is left out of it: it
        // would take the slot of a day the backfill has yet to count.
        let horizon = self
            .max_event_time
            .plus_days(population::DAYS as f64)
            .max(self.max_event_time);
        let far_ahead = self.max_event_time != NEVER && t > horizon;
        if (pop_orders > 0.0 || pop_engagement > 0.0) && !far_ahead {
            self.population.record(t, pop_orders, pop_engagement);
        }
    }

    /// Fits the purchase model on a sample of this engine's customers at stream time:
    /// those whose id hashes into it, in hash order, so that the same customers give the
    /// same parameters in whatever order they were restored. The sample is a cohort by
    /// first order, which the model takes without bias: customers whose first order
    /// came after the engine's warm-up (earlier ones may have bought before it started,
    /// so their counts are cut short) and within the eviction horizon (older ones may
    /// have been forgotten for their silence, the very thing the model learns from);
    /// every customer while that cohort is too small.
    pub(super) fn fit_model(&mut self) {
        let now = self.stream_time.0;
        let warm = self
            .population
            .observed_since()
            .plus_days(self.cfg.signals().no_second_purchase.warmup_days);
        let horizon = self.horizon_ms();
        let oldest = if horizon == 0 {
            i64::MIN
        } else {
            now.saturating_sub(horizon)
        };
        let cohort = |c: &Customer| c.first_order >= warm && c.first_order.0 >= oldest;
        let buyers = |c: &&Customer| !c.id.is_empty() && c.orders_total > 0;
        let in_cohort = self
            .customers
            .iter()
            .filter(buyers)
            .filter(|c| cohort(c))
            .count();
        let all = in_cohort < bgnbd::MIN_SAMPLE;
        let n = if all {
            self.customers.iter().filter(buyers).count()
        } else {
            in_cohort
        };
        let every = n.div_ceil(bgnbd::SAMPLE).max(1) as u32;
        let mut sample: Vec<(u32, &str, bgnbd::Summary)> = self
            .customers
            .iter()
            .filter(buyers)
            .filter(|c| all || cohort(c))
            .filter_map(|c| {
                let fp = fingerprint(&c.id);
                if fp % every != 0 {
                    return None;
                }
                let s =
                    bgnbd::Model::summary(c.first_order.0, c.last_order.0, c.orders_total, now)?;
                Some((fp, c.id.as_str(), s))
            })
            .collect();
        sample.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let samples: Vec<bgnbd::Summary> = sample.into_iter().map(|(_, _, s)| s).collect();
        self.model.refit(&samples, now);
    }

    /// Learns the store's basket spread (see [`basket`]) from a sample of customers at
    /// stream time: those whose id hashes into it, so that the same customers give the
    /// same spread in whatever order they were restored.
    pub(super) fn learn_basket_spread(&mut self) {
        let layout = self.layout_at(self.stream_time);
        let enough = |c: &&Customer| {
            !c.id.is_empty() && c.orders_total as usize >= basket::MIN_ORDER_BUCKETS
        };
        let n = self.customers.iter().filter(enough).count();
        let every = n.div_ceil(basket::SAMPLE).max(1) as u32;
        let estimates = self
            .customers
            .iter()
            .filter(enough)
            .filter(|c| fingerprint(&c.id) % every == 0)
            .filter_map(|c| {
                let (mean, var, buckets) =
                    WindowView::read(&c.ring, layout, c.first_seen).baseline_basket()?;
                basket::estimate(mean, var, buckets)
            })
            .collect();
        if let Some(spread) = basket::prior(estimates) {
            self.basket_spread = Some(spread);
        }
    }

    /// The store's basket spread learnt so far (none before enough customers had a
    /// baseline).
    pub fn basket_spread(&self) -> Option<f64> {
        self.basket_spread
    }

    /// The purchase model in force.
    pub fn purchase_model(&self) -> bgnbd::Params {
        self.model.params
    }

    pub(super) fn population_view(
        &mut self,
        idx: usize,
        recent_start: Timestamp,
        now: Timestamp,
    ) -> PopulationView {
        let cfg = &self.cfg;
        let c = &self.customers[idx];
        let pop = &mut self.population;
        let nsp = &cfg.signals().no_second_purchase;
        let (cadence_days, second_order_days) = pop.priors(now, |pop| {
            let cadence = pop
                .trusted(
                    pop.cadence.quantile(CADENCE_PRIOR_QUANTILE),
                    pop.cadence.total(),
                    MIN_CADENCE_SAMPLES,
                    now,
                )
                .unwrap_or(cfg.signals().inactivity.default_cadence_days);
            let learned = pop.second_order_gap.quantile(nsp.quantile);
            let samples = pop.second_order_gap.total();
            // Until the engine has watched long enough, gaps longer than its watch are
            // missing from the histogram and the learned quantile is too short; but
            // even then it is a lower bound: beyond the configured time, it wins.
            let second = match pop.trusted(learned, samples, nsp.min_samples, now) {
                Some(d) => d,
                None => learned
                    .filter(|_| samples >= nsp.min_samples)
                    .map_or(nsp.expected_days, |d| d.max(nsp.expected_days)),
            };
            let second = if nsp.learn_from_population {
                second.clamp(7.0, 3650.0)
            } else {
                nsp.expected_days
            };
            (cadence, second)
        });
        let mut v = PopulationView {
            cadence_days,
            second_order_days,
            observed_since: pop.observed_since(),
            ..PopulationView::default()
        };
        if cfg.signals().consumption_drop.learn_basket_spread {
            if let Some(spread) = self.basket_spread {
                v.basket_spread = spread;
            }
        }
        if cfg.population().enabled
            && (self.customers.len() - self.free.len()) as u32 >= cfg.population().min_customers
        {
            let m = cfg.population().min_factor;
            v.orders_factor = pop.factor(Activity::Orders, recent_start, now, m);
            v.engagement_factor = pop.factor(Activity::Engagement, recent_start, now, m);
            if c.last_order != NEVER {
                v.order_silence_factor = pop.factor(Activity::Orders, c.last_order, now, m);
            }
            if c.last_engagement != NEVER {
                v.engagement_silence_factor =
                    pop.factor(Activity::Engagement, c.last_engagement, now, m);
            }
        }
        v
    }

    pub(super) fn layout_at(&self, now: Timestamp) -> Layout {
        let e = &self.cfg.engine();
        Layout::at(now, e.bucket_ms(), e.recent_buckets, e.baseline_buckets)
    }

    /// Counts a customer's trailing revenue in the value tiers; returns their bin.
    pub(super) fn register_revenue(&mut self, idx: usize, revenue: f64) -> u16 {
        self.touch(idx);
        let bin = self.tiers.update(self.customers[idx].value_bin, revenue);
        self.customers[idx].value_bin = bin;
        bin
    }
}
