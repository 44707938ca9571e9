//! The one retry backoff: exponential, capped, with jitter so that a fleet of nodes does not
//! retry in lockstep. Used by the lease keeper, the peer watch, the data-plane reconcilers and
//! the task supervisor.

use std::time::Duration;

/// How far a delay may stray from its nominal value, either way (±20 %).
const JITTER: f64 = 0.2;

/// Exponential backoff with jitter: the nominal delay starts at `base` and doubles with each
/// [`Backoff::next_delay`] up to `max`; each delay handed out is the nominal one ±20 %, never more
/// than `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff from `base` up to `max` (`max` below `base` counts as `base`).
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            current: base,
        }
    }

    /// The next delay to wait; the one after it is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.current;
        self.current = (self.current * 2).min(self.max);
        let factor = 1.0 - JITTER + fastrand::f64() * 2.0 * JITTER;
        nominal.mul_f64(factor).min(self.max)
    }

    /// Back to `base`, after a success.
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_delay_is_its_nominal_value_within_twenty_percent_and_never_over_the_cap() {
        for _ in 0..200 {
            let mut b = Backoff::new(ms(100), ms(1000));
            // Nominal: 100, 200, 400, 800, then the cap.
            for nominal in [100u64, 200, 400, 800, 1000, 1000, 1000] {
                let d = b.next_delay();
                let low = ms(nominal * 8 / 10);
                let high = ms(nominal * 12 / 10).min(ms(1000));
                assert!(d >= low && d <= high, "{d:?} not in {low:?}..={high:?}");
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            seen.insert(Backoff::new(ms(1000), ms(1000)).next_delay());
        }
        assert!(seen.len() > 10, "50 delays, only {} distinct", seen.len());
    }

    #[test]
    fn reset_starts_again_from_the_base() {
        let mut b = Backoff::new(ms(100), ms(10_000));
        for _ in 0..10 {
            b.next_delay();
        }
        assert!(b.next_delay() >= ms(8000));
        b.reset();
        assert!(b.next_delay() <= ms(120));
    }

    #[test]
    fn a_cap_below_the_base_is_the_base() {
        let mut b = Backoff::new(ms(500), ms(10));
        for _ in 0..5 {
            let d = b.next_delay();
            assert!(d >= ms(400) && d <= ms(500), "{d:?}");
        }
    }
}
