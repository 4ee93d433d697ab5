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
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { successes: u32 },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    gauge: Gauge,
}

impl Breaker {
    pub fn new(config: BreakerConfig, gauge: Gauge) -> Self {
        gauge.set(State::Closed.gauge());
        Self { config, inner: Mutex::new(Inner::Closed { failures: 0 }), gauge }
    }

    /// Whether a call may go out now; `Err` holds how long the circuit stays open. An open
    /// circuit whose cool-down has passed turns half-open and lets the call through as a probe.
    pub fn allow(&self) -> Result<(), Duration> {
        let mut inner = self.inner.lock().expect("breaker lock");
        if let Inner::Open { until } = *inner {
            let now = Instant::now();
            if now < until {
                return Err(until - now);
            }
            *inner = Inner::HalfOpen { successes: 0 };
            self.gauge.set(State::HalfOpen.gauge());
            tracing::info!("embedding provider circuit half-open: probing");
        }
        Ok(())
    }

    pub fn success(&self) {
        let mut inner = self.inner.lock().expect("breaker lock");
        match &mut *inner {
            Inner::Closed { failures } => *failures = 0,
            Inner::HalfOpen { successes } => {
                *successes += 1;
                if *successes >= self.config.successes {
                    *inner = Inner::Closed { failures: 0 };
                    self.gauge.set(State::Closed.gauge());
                    tracing::info!("embedding provider circuit closed: the provider recovered");
                }
            }
            // A call let through before the circuit opened succeeded late: it proves nothing.
            Inner::Open { .. } => {}
        }
    }

    pub fn failure(&self) {
        let mut inner = self.inner.lock().expect("breaker lock");
        let open = match &mut *inner {
            Inner::Closed { failures } => {
                *failures += 1;
                *failures >= self.config.failures
            }
            Inner::HalfOpen { .. } => true,
            Inner::Open { .. } => false,
        };
        if open {
            *inner = Inner::Open { until: Instant::now() + self.config.cooldown };
            self.gauge.set(State::Open.gauge());
            tracing::warn!(cooldown = ?self.config.cooldown, "embedding provider circuit open: calls stop until the cool-down ends");
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
        b.failure();
        b.failure();
        b.success(); // resets the count
        b.failure();
        b.failure();
        assert_eq!(b.state(), State::Closed);
        b.failure();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.gauge.get(), 1);
        assert!(b.allow().is_err(), "no call while open");

        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.allow().unwrap_err(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow().is_ok(), "the cool-down has passed: probe");
        assert_eq!(b.state(), State::HalfOpen);
        b.success();
        assert_eq!(b.state(), State::HalfOpen);
        b.success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_the_circuit_again() {
        let b = breaker();
        (0..3).for_each(|_| b.failure());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(b.allow().is_ok());
        b.success();
        b.failure();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.open_for(), Some(Duration::from_secs(30)));
    }
}
