#!/usr/bin/env python3
# python3 tests/trust/oracle_cusum.py  (standard library only; about 2 minutes)
# Oracle CUSUM lower bound on detection delay for an order-count halving.
# Orders: renewal process with gamma(shape 4) gaps of mean g (as tests/trust/world.rs);
# after the change the mean gap is 2g. The oracle knows both gap laws exactly, and
# accumulates the log-likelihood ratio in continuous time (hazards), 0.25-day steps.
# Threshold: the 98th percentile of a steady customer's yearly maximum (2%/year alerted).
import math, random, sys
K = 4
def logsurv(t, theta):
    x = t / theta
    s = sum(x**i / math.factorial(i) for i in range(K))
    return -x + math.log(s)
def logdens(t, theta):
    x = t / theta
    return (K - 1) * math.log(x) - x - math.log(math.factorial(K - 1) * theta) if x > 0 else -1e9
def gap(rng, mean):
    return sum(-math.log(1.0 - rng.random()) for _ in range(K)) * mean / K
def run(rng, g, days, change_day=None, h=None, dt=0.25):
    """Returns (max W over the run, first alarm time after change or None, alarmed before change)."""
    th0, th1 = g / K, 2 * g / K
    W, t, last, mx = 0.0, 0.0, 0.0, 0.0
    nxt = gap(rng, g)
    alarm_before = False
    while t < days:
        mean = 2 * g if (change_day is not None and last >= change_day) else g
        t2 = t + dt
        if nxt <= t2:
            # an order at nxt: LR of its gap ending now vs surviving up to t
            tau0, tau1 = t - last, nxt - last
            inc = (logdens(tau1, th1) - logsurv(tau0, th1)) - (logdens(tau1, th0) - logsurv(tau0, th0))
            last = nxt
            g_now = 2 * g if (change_day is not None and last >= change_day) else g
            nxt = last + gap(rng, g_now)
            tau_after = t2 - last
            inc += logsurv(tau_after, th1) - logsurv(tau_after, th0)
        else:
            tau0, tau1 = t - last, t2 - last
            inc = (logsurv(tau1, th1) - logsurv(tau0, th1)) - (logsurv(tau1, th0) - logsurv(tau0, th0))
        W = max(0.0, W + inc)
        t = t2
        mx = max(mx, W)
        if h is not None and W > h:
            if change_day is not None and t >= change_day:
                return mx, t - change_day, alarm_before
            alarm_before = True
            W = 0.0
    return mx, None, alarm_before
rng = random.Random(7)
for g in [7/3, 3.5, 7.0, 14.0]:
    maxes = sorted(run(rng, g, 365)[0] for _ in range(1500))
    h = maxes[int(0.98 * len(maxes))]
    delays = []
    for _ in range(600):
        _, d, before = run(rng, g, 100 + 365, change_day=100, h=h)
        delays.append(d if d is not None else float('inf'))
    delays.sort()
    print(f"gap {g:.1f} d: threshold {h:.2f} nats; oracle delay median {delays[len(delays)//2]:.1f} d, p90 {delays[int(0.9*len(delays))]:.1f} d", flush=True)
