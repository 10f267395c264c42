//! The process's own resources, as the conventional Prometheus `process_*`
//! metrics (unprefixed, as every Prometheus client library names them):
//! resident memory, CPU time, threads and open file descriptors, read from
//! `/proc/self` at each scrape. A soak test watches `process_resident_memory_bytes`
//! for growth. On systems without `/proc` they are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

#[derive(Debug)]
pub(crate) struct ProcessCollector;

/// What `/proc/self` says now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessStats {
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub cpu_seconds: f64,
    pub threads: i64,
    pub open_fds: Option<i64>,
}

impl ProcessStats {
    pub(crate) fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Counting from field 3 (state) at index 0.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<i64>().ok());
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if ticks <= 0 || page <= 0 {
            return None;
        }
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks as f64,
            threads: field(20)?,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as i64),
        })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                Some(stats.resident_bytes),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                Some(stats.virtual_bytes),
            ),
            ("process_threads", "OS threads", None, Some(stats.threads)),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                stats.open_fds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_its_own_memory_cpu_threads_and_files() {
        let before = ProcessStats::read().expect("/proc/self on Linux");
        let ballast = vec![1u8; 64 << 20];
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(i ^ (spin >> 3));
        }
        let after = ProcessStats::read().unwrap();
        assert!(std::hint::black_box(ballast).iter().all(|b| *b == 1));
        std::hint::black_box(spin);
        assert!(
            after.resident_bytes >= before.resident_bytes + (60 << 20),
            "{before:?} {after:?}"
        );
        assert!(after.cpu_seconds >= before.cpu_seconds);
        assert!(after.threads >= 1 && after.open_fds.unwrap() >= 3);
    }
}
