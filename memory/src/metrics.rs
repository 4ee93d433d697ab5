//! What every process exports whatever its roles: `memory_build_info`, the database pool
//! (`memory_db_pool_*`) and the standard `process_*` metrics (CPU, memory, open files), read
//! from `/proc` at each scrape.

use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

/// How often the pool's acquire time is sampled.
const PROBE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
    roles: String,
}

/// Registers the process-wide metrics on the root registry. The returned probe samples how long
/// taking a connection from the pool takes; run it until shutdown.
pub(crate) fn register(root: &mut Registry, roles: &str, pool: sqlx::PgPool) -> PoolProbe {
    root.register_collector(Box::new(Process));
    let memory = root.sub_registry_with_prefix("memory");
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("MEMORY_BUILD_COMMIT"),
        roles: roles.to_owned(),
    })
    .set(1);
    memory.register("build_info", "The running build: version, commit and roles", info);
    let db = memory.sub_registry_with_prefix("db_pool");
    db.register_collector(Box::new(Pool(pool.clone())));
    let acquire = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
    db.register_with_unit(
        "acquire_duration",
        "Time a sampled acquire of a pooled connection waited (every 5 s)",
        Unit::Seconds,
        acquire.clone(),
    );
    PoolProbe { pool, acquire }
}

/// Samples the pool's acquire time: a saturated pool makes every query wait this long first.
pub(crate) struct PoolProbe {
    pool: sqlx::PgPool,
    acquire: Histogram,
}

impl PoolProbe {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(PROBE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let started = Instant::now();
            tokio::select! {
                () = shutdown.cancelled() => return,
                // A failed acquire (the pool's own timeout) still measured the wait.
                connection = self.pool.acquire() => {
                    self.acquire.observe(started.elapsed().as_secs_f64());
                    drop(connection);
                }
            }
        }
    }
}

/// The pool's connections, read at each scrape.
#[derive(Debug)]
struct Pool(sqlx::PgPool);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

impl Collector for Pool {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let size = i64::from(self.0.size());
        let idle = i64::try_from(self.0.num_idle()).unwrap_or(i64::MAX);
        let connections = ConstGauge::new(0i64);
        let mut family =
            encoder.encode_descriptor("connections", "Pooled connections by state", None, connections.metric_type())?;
        for (state, n) in [("in_use", (size - idle).max(0)), ("idle", idle)] {
            ConstGauge::new(n).encode(family.encode_family(&StateLabels { state })?)?;
        }
        let max = ConstGauge::new(i64::from(self.0.options().get_max_connections()));
        max.encode(encoder.encode_descriptor(
            "max_connections",
            "Most connections the pool opens",
            None,
            max.metric_type(),
        )?)
    }
}

/// The standard process metrics, from `/proc/self` (Linux; elsewhere none are exported).
#[derive(Debug)]
struct Process;

/// `/proc/[pid]/stat` counts CPU time in USER_HZ ticks, 100 per second on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(stat) = read("/proc/self/stat") else { return Ok(()) };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            let cpu = ConstCounter::new((user + system) / TICKS_PER_SECOND);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent",
                None,
                cpu.metric_type(),
            )?)?;
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time()) {
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time since the Unix epoch",
                boot + start / TICKS_PER_SECOND,
            )?;
        }
        if let Some(threads) = field(20) {
            gauge(&mut encoder, "process_threads", "Threads", threads)?;
        }
        if let Some(status) = read("/proc/self/status") {
            for (key, name, help) in [
                ("VmRSS:", "process_resident_memory_bytes", "Resident memory size"),
                ("VmSize:", "process_virtual_memory_bytes", "Virtual memory size"),
            ] {
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                {
                    gauge(&mut encoder, name, help, kib * 1024.0)?;
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(&mut encoder, "process_open_fds", "Open file descriptors", fds.count() as f64)?;
        }
        let max_fds = read("/proc/self/limits").and_then(|limits| {
            limits.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse::<f64>().ok()
        });
        if let Some(max) = max_fds {
            gauge(&mut encoder, "process_max_fds", "Most open file descriptors allowed", max)?;
        }
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// When the machine booted, in seconds since the Unix epoch.
fn boot_time() -> Option<f64> {
    read("/proc/stat")?.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    /// The value of an unlabelled sample.
    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    #[test]
    fn process_metrics_read_this_process() {
        // Some CPU time to count (the counter moves in ticks of 10 ms).
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(super::Process));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = sample(&text, "process_start_time_seconds");
        assert!(now - started >= 0.0 && now - started < 600.0, "started {started}, now {now}");
        assert!(sample(&text, "process_threads") >= 1.0);
        assert!(sample(&text, "process_open_fds") >= 3.0, "stdin, stdout, stderr at least");
        assert!(sample(&text, "process_max_fds") >= sample(&text, "process_open_fds"));
        let rss = sample(&text, "process_resident_memory_bytes");
        assert!(rss > 1e6 && rss <= sample(&text, "process_virtual_memory_bytes"), "{rss}");
        assert!(sample(&text, "process_cpu_seconds_total") > 0.0);
    }
}
