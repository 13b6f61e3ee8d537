//! "Dead or just sleeping?": the BG/NBD buy-till-you-die model (Fader, Hardie and Lee,
//! "Counting Your Customers the Easy Way", Marketing Science 24(2), 2005).
//!
//! While alive, a customer buys as a Poisson process of rate λ; after each purchase
//! they drop out for good with probability p. Across customers λ ~ Gamma(r, α) and
//! p ~ Beta(a, b). Each customer is summarised by three numbers, counted from their
//! first order: `x`, the repeat orders; `t_x`, the time of the last order; `t`, the
//! time since the first order (all in days). From the population parameters and those
//! three numbers come, in closed form, the probability that the customer is still
//! alive, the purchases to expect in the next days, and the probability of none.
//!
//! The parameters are fitted per engine by maximum likelihood over its customers (see
//! [`fit`]); until there are enough of them, [`Params::PRIOR`] stands in, the model's
//! published fit to CDNOW's customers converted to days: a customer first seen while an
//! engine warms up is judged against that prior, never left out.
//!
//! Pure and deterministic: the same samples in the same order give the same parameters.

use libm::lgamma;

/// Population parameters: λ ~ Gamma(shape `r`, rate `alpha` per day), p ~ Beta(`a`, `b`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Shape of the purchase-rate distribution.
    pub r: f64,
    /// Rate (scale, in days) of the purchase-rate distribution.
    pub alpha: f64,
    /// Beta parameter of the drop-out probability.
    pub a: f64,
    /// Beta parameter of the drop-out probability.
    pub b: f64,
}

/// One customer's summary, in days from their first order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Repeat orders (orders beyond the first).
    pub x: u32,
    /// Days from the first order to the last.
    pub t_x: f64,
    /// Days from the first order to now.
    pub t: f64,
}

impl Params {
    /// Fader, Hardie and Lee's fit to CDNOW (r 0.243, α 4.414 weeks, a 0.793, b 2.426),
    /// α in days.
    pub const PRIOR: Params = Params {
        r: 0.243,
        alpha: 4.414 * 7.0,
        a: 0.793,
        b: 2.426,
    };

    /// The log-likelihood of one customer's summary.
    pub fn log_likelihood(&self, s: Summary) -> f64 {
        let Params { r, alpha, a, b } = *self;
        let x = f64::from(s.x);
        let a1 = lgamma(r + x) - lgamma(r) + r * alpha.ln();
        let a2 = lgamma(a + b) + lgamma(b + x) - lgamma(b) - lgamma(a + b + x);
        let a3 = -(r + x) * (alpha + s.t).ln();
        if s.x == 0 {
            return a1 + a2 + a3;
        }
        let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + s.t_x).ln();
        // ln(e^a3 + e^a4), without overflow
        let m = a3.max(a4);
        a1 + a2 + m + ((a3 - m).exp() + (a4 - m).exp()).ln()
    }

    /// The odds against being alive that the silence since the last order adds (0 for
    /// a customer without a repeat order, who cannot have dropped out under BG/NBD).
    fn dead_odds(&self, s: Summary) -> f64 {
        if s.x == 0 {
            return 0.0;
        }
        let x = f64::from(s.x);
        let ratio = (self.alpha + s.t) / (self.alpha + s.t_x);
        self.a / (self.b + x - 1.0) * ((self.r + x) * ratio.ln()).exp()
    }

    /// P(alive | x, t_x, t).
    pub fn p_alive(&self, s: Summary) -> f64 {
        1.0 / (1.0 + self.dead_odds(s))
    }

    /// Purchases to expect in the next `days` (E[Y(days) | x, t_x, t]).
    pub fn expected_purchases(&self, s: Summary, days: f64) -> f64 {
        let Params { r, alpha, a, b } = *self;
        let x = f64::from(s.x);
        let z = days / (alpha + s.t + days);
        // 1 − ((α+t)/(α+t+days))^(r+x) · 2F1(r+x, b+x; a+b+x−1; z), with the hypergeometric
        // function taken through Euler's transformation, 2F1(A,B;C;z) =
        // (1−z)^(C−A−B) 2F1(C−A, C−B; C; z): its series has small parameters and the
        // powers of (1−z) combine to (1−z)^(a−1).
        let c = a + b + x - 1.0;
        let (ea, eb) = (a + b - 1.0 - r, a - 1.0);
        let ln_rest = ln_hyp2f1(ea, eb, c, z).unwrap_or_else(|| hyp2f1_plain(ea, eb, c, z).ln())
            + (a - 1.0) * (1.0 - z).ln();
        let second = 1.0 - ln_rest.exp();
        let first = if (a - 1.0).abs() < 1e-9 {
            // The limit a → 1 of (a+b+x−1)/(a−1) · second.
            return limit_a_one(self, s, days);
        } else {
            (a + b + x - 1.0) / (a - 1.0)
        };
        (first * second / (1.0 + self.dead_odds(s))).max(0.0)
    }

    /// P(no purchase in the next `days` | x, t_x, t): dead, or alive and buying nothing
    /// (for an alive customer, λ's posterior is Gamma(r + x, α + t)).
    pub fn p_none(&self, s: Summary, days: f64) -> f64 {
        let alive = self.p_alive(s);
        let quiet = ((self.r + f64::from(s.x))
            * ((self.alpha + s.t) / (self.alpha + s.t + days)).ln())
        .exp();
        (1.0 - alive) + alive * quiet
    }

    /// The mean log-likelihood of `samples` (`-inf` for parameters out of range).
    pub fn mean_log_likelihood(&self, samples: &[Summary]) -> f64 {
        if samples.is_empty() || !self.valid() {
            return f64::NEG_INFINITY;
        }
        let sum: f64 = samples.iter().map(|s| self.log_likelihood(*s)).sum();
        sum / samples.len() as f64
    }

    fn valid(&self) -> bool {
        [self.r, self.alpha, self.a, self.b]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
    }
}

/// An engine's model: the fitted parameters, and when they are fitted again (stream
/// time). Fitted every [`FIT_EVERY_DAYS`] of stream time, on at most [`SAMPLE`]
/// customers chosen by a hash of their id (so the same customers give the same sample in
/// any order), once at least [`MIN_SAMPLE`] have ordered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    /// The parameters in force.
    pub params: Params,
    /// Next fit, ms of stream time (`i64::MIN`: at the first chance).
    pub next_fit: i64,
    /// Fits so far that replaced the parameters.
    pub fits: u32,
}

/// Days of stream time between fits.
pub const FIT_EVERY_DAYS: i64 = 7;
/// Most customers a fit looks at.
pub const SAMPLE: usize = 3_000;
/// Fewest customers with an order before the prior gives way to a fit.
pub const MIN_SAMPLE: usize = 200;
/// Nelder–Mead steps per fit (it starts from the last fit's parameters).
pub const FIT_ITERATIONS: usize = 400;

impl Default for Model {
    fn default() -> Self {
        Model {
            params: Params::PRIOR,
            next_fit: i64::MIN,
            fits: 0,
        }
    }
}

impl Model {
    /// Is a fit due at stream time `now` (ms)?
    pub fn due(&self, now: i64) -> bool {
        now >= self.next_fit
    }

    /// Fits to `samples` (at least [`MIN_SAMPLE`] of them, or the prior stays) and
    /// schedules the next fit after `now`.
    pub fn refit(&mut self, samples: &[Summary], now: i64) {
        self.next_fit = now.saturating_add(FIT_EVERY_DAYS * crate::time::DAY_MS);
        if samples.len() < MIN_SAMPLE {
            return;
        }
        let fitted = fit(samples, self.params, FIT_ITERATIONS);
        if fitted != self.params {
            self.params = fitted;
            self.fits += 1;
        }
    }

    /// A customer's summary at `now` from their first and last order and order count
    /// (`None` before the first order).
    pub fn summary(first: i64, last: i64, orders: u32, now: i64) -> Option<Summary> {
        if orders == 0 || first == i64::MIN {
            return None;
        }
        let day = crate::time::DAY_MS as f64;
        let t_x = ((last - first) as f64 / day).max(0.0);
        Some(Summary {
            x: orders - 1,
            t_x,
            t: ((now - first) as f64 / day).max(t_x),
        })
    }

    /// Writes the model into an engine record.
    pub fn encode(&self, w: &mut crate::engine::codec::Writer<'_>) {
        for v in [
            self.params.r,
            self.params.alpha,
            self.params.a,
            self.params.b,
        ] {
            w.f64(v);
        }
        w.i64(self.next_fit);
        w.u64(u64::from(self.fits));
    }

    /// Reads what [`Model::encode`] wrote.
    pub fn decode(
        r: &mut crate::engine::codec::Reader<'_>,
    ) -> Result<Model, crate::engine::codec::CodecError> {
        let mut v = [0.0; 4];
        for x in &mut v {
            *x = r.f64()?;
        }
        let params = Params {
            r: v[0],
            alpha: v[1],
            a: v[2],
            b: v[3],
        };
        if !params.valid() {
            return Err(crate::engine::codec::CodecError::Invalid(
                "model parameters out of range",
            ));
        }
        Ok(Model {
            params,
            next_fit: r.i64()?,
            fits: u32::try_from(r.u64()?).unwrap_or(u32::MAX),
        })
    }
}

/// E[Y] as `a` → 1, by the derivative of the second term in `a` (central difference).
fn limit_a_one(p: &Params, s: Summary, days: f64) -> f64 {
    let h = 1e-4;
    let lo = Params { a: 1.0 - h, ..*p };
    let hi = Params { a: 1.0 + h, ..*p };
    0.5 * (lo.expected_purchases(s, days) + hi.expected_purchases(s, days))
}

/// The Gauss hypergeometric function 2F1(a, b; c; z) for 0 ≤ z < 1, by its series.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    ln_hyp2f1(a, b, c, z).map_or_else(|| hyp2f1_plain(a, b, c, z), f64::exp)
}

/// ln 2F1(a, b; c; z) summed in log space, for positive parameters (every term
/// positive), where large parameters make single terms overflow; `None` otherwise.
fn ln_hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    if !(a > 0.0 && b > 0.0 && c > 0.0 && z > 0.0) {
        return None;
    }
    let lz = z.ln();
    let (mut ln_term, mut ln_sum) = (0.0f64, 0.0f64);
    for n in 0..1_000_000 {
        let n = f64::from(n);
        ln_term += (a + n).ln() + (b + n).ln() - (c + n).ln() - (n + 1.0).ln() + lz;
        let m = ln_sum.max(ln_term);
        ln_sum = m + ((ln_sum - m).exp() + (ln_term - m).exp()).ln();
        if ln_term < ln_sum - 36.0 && n > b * z {
            break;
        }
    }
    Some(ln_sum)
}

fn hyp2f1_plain(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 0..200_000 {
        let n = f64::from(n);
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        sum += term;
        if term.abs() <= 1e-15 * sum.abs() || term == 0.0 {
            break;
        }
    }
    sum
}

/// Fits the parameters to `samples` by maximum likelihood (Nelder–Mead on the
/// logarithms of the parameters, from `start`, at most `max_iterations` steps).
/// Returns `start` when the samples cannot improve on it.
pub fn fit(samples: &[Summary], start: Params, max_iterations: usize) -> Params {
    let to = |p: &Params| [p.r.ln(), p.alpha.ln(), p.a.ln(), p.b.ln()];
    let from = |v: &[f64; 4]| {
        // Bounded: beyond, the Gamma and Beta distributions are as good as a single
        // value, and the likelihood no longer changes.
        let c = |x: f64| x.clamp(-9.0, 9.0).exp();
        Params {
            r: c(v[0]),
            alpha: c(v[1]),
            a: c(v[2]),
            b: c(v[3]),
        }
    };
    let cost = |v: &[f64; 4]| {
        let ll = from(v).mean_log_likelihood(samples);
        if ll.is_finite() {
            -ll
        } else {
            f64::INFINITY
        }
    };
    let best = nelder_mead(cost, to(&start), 0.3, max_iterations);
    let fitted = from(&best);
    if cost(&best) <= cost(&to(&start)) {
        fitted
    } else {
        start
    }
}

/// Minimises `f` by the Nelder–Mead simplex method (standard coefficients), from `x0`
/// with an initial step `step` in every direction.
fn nelder_mead(f: impl Fn(&[f64; 4]) -> f64, x0: [f64; 4], step: f64, max_iter: usize) -> [f64; 4] {
    const N: usize = 4;
    let mut simplex: Vec<([f64; N], f64)> = Vec::with_capacity(N + 1);
    simplex.push((x0, f(&x0)));
    for i in 0..N {
        let mut x = x0;
        x[i] += step;
        simplex.push((x, f(&x)));
    }
    let combine = |a: &[f64; N], b: &[f64; N], t: f64| {
        let mut out = [0.0; N];
        for k in 0..N {
            out[k] = a[k] + t * (b[k] - a[k]);
        }
        out
    };
    for _ in 0..max_iter {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, worst) = (simplex[0].1, simplex[N].1);
        if (worst - best).abs() <= 1e-10 * (1.0 + best.abs()) {
            break;
        }
        let mut centroid = [0.0; N];
        for (x, _) in &simplex[..N] {
            for k in 0..N {
                centroid[k] += x[k] / N as f64;
            }
        }
        let w = simplex[N].0;
        let reflected = combine(&centroid, &w, -1.0);
        let fr = f(&reflected);
        if fr < simplex[0].1 {
            let expanded = combine(&centroid, &w, -2.0);
            let fe = f(&expanded);
            simplex[N] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < simplex[N - 1].1 {
            simplex[N] = (reflected, fr);
        } else {
            let (towards, ft) = if fr < simplex[N].1 {
                (reflected, fr)
            } else {
                (w, simplex[N].1)
            };
            let contracted = combine(&centroid, &towards, 0.5);
            let fc = f(&contracted);
            if fc < ft {
                simplex[N] = (contracted, fc);
            } else {
                let b = simplex[0].0;
                for item in simplex.iter_mut().skip(1) {
                    let x = combine(&b, &item.0, 0.5);
                    *item = (x, f(&x));
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex[0].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: u32, t_x: f64, t: f64) -> Summary {
        Summary { x, t_x, t }
    }

    #[test]
    fn without_a_repeat_order_a_customer_is_alive() {
        assert_eq!(Params::PRIOR.p_alive(s(0, 0.0, 400.0)), 1.0);
    }

    #[test]
    fn the_hypergeometric_series_meets_known_values() {
        // 2F1(1, 1; 2; z) = −ln(1−z)/z
        for z in [0.1, 0.5, 0.9, 0.99] {
            let want = -(1.0f64 - z).ln() / z;
            assert!((hyp2f1(1.0, 1.0, 2.0, z) - want).abs() < 1e-9 * want, "{z}");
        }
        // 2F1(a, b; b; z) = (1−z)^−a
        assert!((hyp2f1(0.7, 2.5, 2.5, 0.6) - 0.4f64.powf(-0.7)).abs() < 1e-12);
    }

    #[test]
    fn expected_purchases_of_a_customer_certainly_alive_for_a_short_time_follow_the_rate() {
        // Over a short horizon E[Y] ≈ P(alive) · E[λ | data] · days.
        let p = Params::PRIOR;
        let c = s(10, 200.0, 200.0);
        let rate = (p.r + 10.0) / (p.alpha + 200.0);
        let e = p.expected_purchases(c, 1.0);
        assert!((e - p.p_alive(c) * rate).abs() < 0.02 * e, "{e} vs {rate}");
    }

    /// Values from the `lifetimes` package on a population simulated from known
    /// parameters (tests/fixtures/bgnbd_reference.py).
    fn reference() -> serde_json::Value {
        serde_json::from_str(include_str!("../../tests/fixtures/bgnbd_reference.json")).unwrap()
    }

    fn params(v: &serde_json::Value) -> Params {
        Params {
            r: v["r"].as_f64().unwrap(),
            alpha: v["alpha"].as_f64().unwrap(),
            a: v["a"].as_f64().unwrap(),
            b: v["b"].as_f64().unwrap(),
        }
    }

    fn summaries(v: &serde_json::Value) -> Vec<Summary> {
        v["customers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                s(
                    c["x"].as_u64().unwrap() as u32,
                    c["t_x"].as_f64().unwrap(),
                    c["t"].as_f64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_log_likelihood_is_the_reference_implementations() {
        let v = reference();
        let p = params(&v["true"]);
        for (c, s) in v["customers"].as_array().unwrap().iter().zip(summaries(&v)) {
            let want = c["ll_true"].as_f64().unwrap();
            let got = p.log_likelihood(s);
            assert!(
                (got - want).abs() < 1e-9 * want.abs().max(1.0),
                "{s:?}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn p_alive_and_expected_purchases_are_the_reference_implementations() {
        let v = reference();
        let p = params(&v["fitted"]);
        let alive = v["p_alive_fitted"].as_array().unwrap();
        let expected = v["expected_90_fitted"].as_array().unwrap();
        for ((s, a), e) in summaries(&v).into_iter().zip(alive).zip(expected) {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!(
                (p.p_alive(s) - a).abs() < 1e-9,
                "{s:?}: P(alive) {} vs {a}",
                p.p_alive(s)
            );
            let got = p.expected_purchases(s, 90.0);
            assert!(
                (got - e).abs() < 1e-7 * e.max(1.0),
                "{s:?}: E[Y(90)] {got} vs {e}"
            );
        }
    }

    #[test]
    fn the_fit_finds_the_reference_implementations_maximum() {
        let v = reference();
        let samples = summaries(&v);
        let want = params(&v["fitted"]);
        let got = fit(&samples, Params::PRIOR, 2_000);
        let mean_ll = v["mean_ll_fitted"].as_f64().unwrap();
        // The same maximum: its likelihood, and the parameters up to the flatness of
        // the likelihood around it.
        assert!(
            (got.mean_log_likelihood(&samples) - mean_ll).abs() < 1e-6,
            "{got:?}"
        );
        for (g, w) in [
            (got.r, want.r),
            (got.alpha, want.alpha),
            (got.a, want.a),
            (got.b, want.b),
        ] {
            assert!((g - w).abs() < 0.02 * w, "{got:?} vs {want:?}");
        }
    }

    proptest! {
        #[test]
        fn p_alive_falls_with_silence_and_rises_with_each_purchase(
            x in 1u32..60, t_x in 0.0f64..400.0, gap in 0.0f64..400.0, more in 1.0f64..200.0,
        ) {
            let p = Params::PRIOR;
            let now = s(x, t_x, t_x + gap);
            let later = s(x, t_x, t_x + gap + more);
            prop_assert!(p.p_alive(later) < p.p_alive(now) || p.p_alive(now) < 1e-12);
            // a purchase now, instead of the silence
            let bought = s(x + 1, t_x + gap + more, t_x + gap + more);
            prop_assert!(p.p_alive(bought) >= p.p_alive(later));
            prop_assert!((0.0..=1.0).contains(&p.p_alive(now)));
            let none = p.p_none(now, 90.0);
            prop_assert!((0.0..=1.0).contains(&none));
            prop_assert!(p.expected_purchases(now, 90.0) >= 0.0);
        }
    }
}
