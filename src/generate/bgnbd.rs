//! Populations simulated from the BG/NBD model itself (see [`crate::engine::bgnbd`]):
//! each customer draws a purchase rate λ ~ Gamma(r, α) and a drop-out probability
//! p ~ Beta(a, b), buys as a Poisson process of rate λ from their first purchase, and
//! after each repeat purchase drops out for good with probability p. Used to check that the
//! engine recovers known parameters and to measure how well P(alive) and the health
//! score rank customers (`churnsignal evaluate`). Deterministic in its seed.

use crate::engine::bgnbd::Params;
use crate::time::{Timestamp, DAY_MS};

/// A small, seeded generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Gamma(shape, 1) (Marsaglia and Tsang; boosted for shape < 1).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b).
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }

    /// Exponential with rate `rate`.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -self.uniform().ln() / rate
    }
}

/// One simulated customer: when they first bought, every purchase (days from the
/// population's start), and whether they were still alive at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    /// Purchase days, the first one first.
    pub purchases: Vec<f64>,
    /// Still alive at `days`.
    pub alive: bool,
}

/// `n` customers over `days` days: each starts with a purchase on a day uniform in
/// `0..arrivals` (0 for all at once), then follows the model until `days`.
pub fn simulate(p: &Params, n: usize, days: f64, arrivals: f64, seed: u64) -> Vec<Customer> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let lambda = rng.gamma(p.r) / p.alpha;
            let drop = rng.beta(p.a, p.b);
            let mut t = rng.uniform() * arrivals;
            let mut purchases = vec![t];
            let mut alive = true;
            loop {
                t += rng.exponential(lambda.max(1e-12));
                if t >= days {
                    break;
                }
                purchases.push(t);
                // After each repeat purchase: drop out with probability p.
                if rng.uniform() < drop {
                    alive = false;
                    break;
                }
            }
            Customer { purchases, alive }
        })
        .collect()
}

/// The order events of simulated customers (`order.placed`, amount 50), as contract JSON
/// lines in time order, from `start`; customer ids `bg-<index>`.
pub fn order_lines(customers: &[Customer], start: Timestamp) -> Vec<(Timestamp, String)> {
    let mut out: Vec<(Timestamp, String)> = Vec::new();
    for (i, c) in customers.iter().enumerate() {
        for (k, d) in c.purchases.iter().enumerate() {
            let at = Timestamp(start.0 + (d * DAY_MS as f64) as i64);
            out.push((
                at,
                format!(
                    r#"{{"event_id":"bg-{i}-{k}","customer_id":"bg-{i}","type":"order.placed","occurred_at":"{at}","order_id":"bg-{i}-{k}","amount":50}}"#
                ),
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::bgnbd::{fit, Summary};

    #[test]
    fn the_samplers_have_the_right_means() {
        let mut rng = Rng::new(1);
        let n = 200_000;
        let g: f64 = (0..n).map(|_| rng.gamma(0.3)).sum::<f64>() / n as f64;
        assert!((g - 0.3).abs() < 0.01, "{g}");
        let g: f64 = (0..n).map(|_| rng.gamma(4.0)).sum::<f64>() / n as f64;
        assert!((g - 4.0).abs() < 0.05, "{g}");
        let b: f64 = (0..n).map(|_| rng.beta(0.8, 2.4)).sum::<f64>() / n as f64;
        assert!((b - 0.25).abs() < 0.005, "{b}");
    }

    /// Maximum likelihood recovers the parameters a population was drawn from: within
    /// 10% at 20,000 customers, for CDNOW-like and for more loyal populations.
    #[test]
    fn the_fit_recovers_known_parameters_at_20000_customers() {
        for (truth, seed) in [
            (Params::PRIOR, 11),
            (
                Params {
                    r: 1.2,
                    alpha: 40.0,
                    a: 0.6,
                    b: 6.0,
                },
                12,
            ),
        ] {
            let end = 540.0;
            let sims = simulate(&truth, 20_000, end, 180.0, seed);
            let samples: Vec<Summary> = sims
                .iter()
                .map(|c| {
                    let first = c.purchases[0];
                    Summary {
                        x: c.purchases.len() as u32 - 1,
                        t_x: c.purchases.last().unwrap() - first,
                        t: end - first,
                    }
                })
                .collect();
            let got = fit(&samples, Params::PRIOR, 3_000);
            for (name, g, w) in [
                ("r", got.r, truth.r),
                ("alpha", got.alpha, truth.alpha),
                ("a", got.a, truth.a),
                ("b", got.b, truth.b),
            ] {
                assert!(
                    (g - w).abs() <= 0.1 * w,
                    "{name}: {g} against {w} ({got:?})"
                );
            }
        }
    }
}
