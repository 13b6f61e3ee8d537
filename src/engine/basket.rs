//! The store's basket spread: how far one order's value usually strays from the
//! customer's own mean order value (a coefficient of variation), learnt from the
//! engine's customers.
//!
//! `consumption_drop` judges a smaller basket against the customer's own basket-to-basket
//! spread, shrunk toward a prior so that a few orders never make a drop look certain.
//! A fixed prior has to be generous (real baskets vary a lot), and where they vary little
//! it hides a halved basket for weeks: a weekly buyer's spread estimated from eight
//! orders is dominated by it. This module replaces it with the store's own: at each fit
//! of the purchase model, every customer of a sample with enough orders in their
//! baseline gives their own estimate, and the prior is a high quantile of those, so a
//! customer whose baskets vary more than most is still judged against a generous spread.

/// The quantile of the sampled customers' own spreads taken as the prior: well above
/// the median, because each estimate is noisy, eight weeks of baseline rarely hold one
/// of the cancelled or refunded orders that give real baskets their heavy lower tail,
/// and the prior must not be tighter than the spread of a customer whose baskets vary
/// more than the typical one. The project's generator (refunds and cancellations)
/// alerted 1.5% of its steady customers in 200 days with the upper quartile, 0.7% with
/// this (0.6% with the fixed prior); the halved baskets of the trust tests are caught
/// as early with either.
pub const QUANTILE: f64 = 0.9;

/// Fewest order buckets in a customer's baseline for their estimate to count.
pub const MIN_ORDER_BUCKETS: usize = 4;

/// Fewest customers with an estimate before the store's spread replaces the fixed one.
pub const MIN_CUSTOMERS: usize = 200;

/// Most customers a fit looks at.
pub const SAMPLE: usize = 3_000;

/// The spread learnt is kept within these bounds.
pub const BOUNDS: (f64, f64) = (0.15, 1.0);

/// One customer's estimate from their baseline's mean order value, the between-bucket
/// variance of one order's value, and the number of buckets with orders (see
/// `WindowView::baseline_basket`); none with too few buckets.
pub fn estimate(mean: f64, var: f64, buckets: usize) -> Option<f64> {
    (buckets >= MIN_ORDER_BUCKETS && mean > 0.0 && var.is_finite())
        .then(|| var.max(0.0).sqrt() / mean)
}

/// The store's spread from the customers' estimates (in any order), none with fewer
/// than [`MIN_CUSTOMERS`].
pub fn prior(mut estimates: Vec<f64>) -> Option<f64> {
    estimates.retain(|v| v.is_finite());
    if estimates.len() < MIN_CUSTOMERS {
        return None;
    }
    estimates.sort_by(f64::total_cmp);
    let k = ((estimates.len() - 1) as f64 * QUANTILE).round() as usize;
    Some(estimates[k].clamp(BOUNDS.0, BOUNDS.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_few_customers_leave_the_fixed_prior() {
        assert_eq!(prior(vec![0.2; MIN_CUSTOMERS - 1]), None);
        assert_eq!(prior(vec![0.2; MIN_CUSTOMERS]), Some(0.2));
    }

    #[test]
    fn the_prior_is_the_ninetieth_percentile_of_the_estimates_in_any_order() {
        // 300 customers, the top 35 (more than a tenth) at 0.6
        let spread = |top: usize| -> Vec<f64> {
            (0..300)
                .map(|i| match i {
                    0..240 => 0.2,
                    i if i < 300 - top => 0.3,
                    _ => 0.6,
                })
                .collect()
        };
        let mut e = spread(35);
        assert_eq!(prior(e.clone()), Some(0.6));
        e.reverse();
        assert_eq!(prior(e), Some(0.6));
        // 25 at 0.6, fewer than a tenth: the next estimate down
        assert_eq!(prior(spread(25)), Some(0.3));
    }

    #[test]
    fn the_prior_stays_within_bounds() {
        assert_eq!(prior(vec![0.01; 500]), Some(BOUNDS.0));
        assert_eq!(prior(vec![5.0; 500]), Some(BOUNDS.1));
    }

    #[test]
    fn a_customer_counts_with_enough_order_buckets_only() {
        assert_eq!(estimate(100.0, 400.0, MIN_ORDER_BUCKETS - 1), None);
        assert_eq!(estimate(100.0, 400.0, MIN_ORDER_BUCKETS), Some(0.2));
        assert_eq!(estimate(0.0, 400.0, 8), None);
    }
}
