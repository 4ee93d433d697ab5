//! The circuit breaker around the embedding provider. Closed: calls go through, and `failures`
//! consecutive failures open it. Open: no call goes out until the cool-down has passed. Half-open:
//! calls go through as probes; `successes` successes in a row close it, one failure opens it again.
//! The breaker sits outside the provider's own retries: one failure is one exhausted call.

use std::sync::Mutex;
use std::time::Duration;

use common::config::BreakerConfig;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probing`: a probe is out; no other call goes until it answers.
    HalfOpen {
        successes: u32,
        probing: bool,
    },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    gauge: Gauge,
}

/// How long a call refused while a probe is out waits before asking again.
pub(crate) const PROBE_WAIT: Duration = Duration::from_millis(100);

/// A call the breaker let through: report how it went with [`Call::success`] or
/// [`Call::failure`]. A probe dropped unreported (its caller gave up) lets the next probe go.
#[derive(Debug)]
#[must_use = "report the call's outcome"]
pub struct Call<'a> {
    breaker: &'a Breaker,
    /// Let through half-open, as the one probe.
    probe: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig, gauge: Gauge) -> Self {
        gauge.set(State::Closed.gauge());
        Self { config, inner: Mutex::new(Inner::Closed { failures: 0 }), gauge }
    }

    /// Whether a call may go out now; `Err` holds how long to wait. An open circuit whose
    /// cool-down has passed turns half-open and lets one call through as a probe; while it is
    /// out, other calls wait [`PROBE_WAIT`].
    pub fn allow(&self) -> Result<Call<'_>, Duration> {
        let mut inner = self.inner.lock().expect("breaker lock");
        match &mut *inner {
            Inner::Closed { .. } => Ok(Call { breaker: self, probe: false }),
            Inner::Open { until } => {
                let now = Instant::now();
                if now < *until {
                    return Err(*until - now);
                }
                *inner = Inner::HalfOpen { successes: 0, probing: true };
                self.gauge.set(State::HalfOpen.gauge());
                tracing::info!("embedding provider circuit half-open: probing");
                Ok(Call { breaker: self, probe: true })
            }
            Inner::HalfOpen { probing: true, .. } => Err(PROBE_WAIT),
            Inner::HalfOpen { probing, .. } => {
                *probing = true;
                Ok(Call { breaker: self, probe: true })
            }
        }
    }

    fn success(&self, probe: bool) {
        let mut inner = self.inner.lock().expect("breaker lock");
        match &mut *inner {
            Inner::Closed { failures } => *failures = 0,
            Inner::HalfOpen { successes, probing } if probe => {
                *probing = false;
                *successes += 1;
                if *successes >= self.config.successes {
                    *inner = Inner::Closed { failures: 0 };
                    self.gauge.set(State::Closed.gauge());
                    tracing::info!("embedding provider circuit closed: the provider recovered");
                }
            }
            // A call let through before the circuit opened succeeded late: it proves nothing.
            Inner::HalfOpen { .. } | Inner::Open { .. } => {}
        }
    }

    fn failure(&self, probe: bool) {
        let mut inner = self.inner.lock().expect("breaker lock");
        let open = match &mut *inner {
            Inner::Closed { failures } => {
                *failures += 1;
                *failures >= self.config.failures
            }
            Inner::HalfOpen { .. } => probe,
            Inner::Open { .. } => false,
        };
        if open {
            *inner = Inner::Open { until: Instant::now() + self.config.cooldown };
            self.gauge.set(State::Open.gauge());
            tracing::warn!(cooldown = ?self.config.cooldown, "embedding provider circuit open: calls stop until the cool-down ends");
        }
    }

    /// A probe that never reported: the next call may probe.
    fn abandon(&self) {
        if let Inner::HalfOpen { probing, .. } = &mut *self.inner.lock().expect("breaker lock") {
            *probing = false;
        }
    }

    pub fn state(&self) -> State {
        match *self.inner.lock().expect("breaker lock") {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// How long the circuit stays open, if it is open.
    pub fn open_for(&self) -> Option<Duration> {
        match *self.inner.lock().expect("breaker lock") {
            Inner::Open { until } => Some(until.saturating_duration_since(Instant::now())),
            _ => None,
        }
    }
}

impl Call<'_> {
    pub fn success(self) {
        self.breaker.success(self.probe);
        std::mem::forget(self);
    }

    pub fn failure(self) {
        self.breaker.failure(self.probe);
        std::mem::forget(self);
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        let config = BreakerConfig { failures: 3, cooldown: Duration::from_secs(30), successes: 2 };
        Breaker::new(config, Gauge::default())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_closes_after_probes() {
        let b = breaker();
        let fail = |b: &Breaker| b.allow().unwrap().failure();
        fail(&b);
        fail(&b);
        b.allow().unwrap().success(); // resets the count
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), State::Closed);
        fail(&b);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.gauge.get(), 1);
        assert!(b.allow().is_err(), "no call while open");

        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.allow().unwrap_err(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.allow().expect("the cool-down has passed: probe");
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.allow().unwrap_err(), PROBE_WAIT, "one probe at a time");
        probe.success();
        assert_eq!(b.state(), State::HalfOpen);
        b.allow().unwrap().success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_the_circuit_again() {
        let b = breaker();
        (0..3).for_each(|_| b.allow().unwrap().failure());
        tokio::time::advance(Duration::from_secs(30)).await;
        b.allow().unwrap().success();
        b.allow().unwrap().failure();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.open_for(), Some(Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_out_and_a_stale_call_proves_nothing() {
        let b = breaker();
        // A call let out while closed answers after the circuit opened and turned half-open.
        let stale = b.allow().unwrap();
        (0..3).for_each(|_| b.allow().unwrap().failure());
        tokio::time::advance(Duration::from_secs(30)).await;
        let probe = b.allow().unwrap();
        stale.success();
        assert_eq!(b.allow().unwrap_err(), PROBE_WAIT, "the stale success freed no place");
        // A probe whose caller gave up lets the next one go.
        drop(probe);
        let probe = b.allow().expect("the abandoned probe's place");
        let stale = b.allow();
        assert!(stale.is_err());
        probe.success();
        b.allow().unwrap().success();
        assert_eq!(b.state(), State::Closed);
        // A stale failure while half-open does not reopen the circuit either.
        (0..3).for_each(|_| b.allow().unwrap().failure());
        let late = Call { breaker: &b, probe: false };
        tokio::time::advance(Duration::from_secs(30)).await;
        let probe = b.allow().unwrap();
        late.failure();
        assert_eq!(b.state(), State::HalfOpen);
        probe.success();
    }
}
