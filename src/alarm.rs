//! Resource alarms: memory above the high watermark, or free disk below the limit.
//!
//! A monitor task samples the broker's resident memory (`/proc/self/statm`) and the free
//! space of the data directory's filesystem (`statvfs`) every [`SAMPLE_INTERVAL`]. While an
//! alarm is raised, connections that publish are blocked (RabbitMQ's behaviour: they get
//! `connection.blocked` and their socket is no longer read), so publishers slow down instead
//! of the broker running out of memory or disk; consumers keep being served, which is what
//! clears the alarm.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// Which alarms are raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Alarms {
    pub memory: bool,
    pub disk: bool,
}

impl Alarms {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The reason text RabbitMQ puts in connection.blocked.
    pub fn reason(self) -> &'static str {
        match (self.memory, self.disk) {
            (true, true) => "low on memory and disk",
            (true, false) => "low on memory",
            (false, true) => "low on disk",
            (false, false) => "",
        }
    }
}

/// The limits alarms are raised at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_high_watermark_bytes: u64,
    pub disk_free_limit_bytes: u64,
}

/// One sample of the resources watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub resident_bytes: u64,
    pub disk_free_bytes: u64,
}

impl Limits {
    pub fn evaluate(&self, sample: Sample) -> Alarms {
        Alarms {
            memory: self.memory_high_watermark_bytes != 0
                && sample.resident_bytes >= self.memory_high_watermark_bytes,
            disk: sample.disk_free_bytes < self.disk_free_limit_bytes,
        }
    }
}

/// Limits that can be changed while the broker runs (RabbitMQ's `set_disk_free_limit` and
/// `set_vm_memory_high_watermark`); the monitor reads them at every sample.
pub type SharedLimits = std::sync::Arc<parking_lot::Mutex<Limits>>;

/// Starts the monitor; the receiver tells connections the current alarms.
pub fn spawn_monitor(limits: SharedLimits, data_dir: PathBuf) -> watch::Receiver<Alarms> {
    let (tx, rx) = watch::channel(Alarms::default());
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
        loop {
            interval.tick().await;
            let Some(sample) = sample(&data_dir) else {
                continue;
            };
            let alarms = limits.lock().evaluate(sample);
            let changed = tx.send_if_modified(|current| {
                let changed = *current != alarms;
                *current = alarms;
                changed
            });
            if changed {
                tracing::warn!(
                    ?alarms,
                    resident = sample.resident_bytes,
                    disk_free = sample.disk_free_bytes,
                    "resource alarms changed"
                );
            }
            if tx.is_closed() {
                break;
            }
        }
    });
    rx
}

pub fn sample(data_dir: &Path) -> Option<Sample> {
    Some(Sample {
        resident_bytes: resident_bytes()?,
        disk_free_bytes: disk_free_bytes(data_dir)?,
    })
}

/// Resident set size of this process.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn disk_free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    // The field types differ between libc targets; on x86_64 they are already u64.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(stat.f_bavail) * u64::from(stat.f_frsize);
    Some(free)
}

/// Total physical memory, for the default high watermark.
pub fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_follow_the_limits() {
        let limits = Limits {
            memory_high_watermark_bytes: 1000,
            disk_free_limit_bytes: 500,
        };
        let ok = Sample {
            resident_bytes: 999,
            disk_free_bytes: 500,
        };
        assert_eq!(limits.evaluate(ok), Alarms::default());
        let both = Sample {
            resident_bytes: 1000,
            disk_free_bytes: 499,
        };
        assert_eq!(
            limits.evaluate(both),
            Alarms {
                memory: true,
                disk: true
            }
        );
        assert_eq!(limits.evaluate(both).reason(), "low on memory and disk");
    }

    #[test]
    fn zero_memory_watermark_disables_the_memory_alarm() {
        let limits = Limits {
            memory_high_watermark_bytes: 0,
            disk_free_limit_bytes: 0,
        };
        assert!(!limits
            .evaluate(Sample {
                resident_bytes: u64::MAX,
                disk_free_bytes: 0
            })
            .any());
    }

    #[test]
    fn this_machine_can_be_sampled() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample(dir.path()).expect("proc and statvfs work here");
        assert!(s.resident_bytes > 0 && s.disk_free_bytes > 0);
        assert!(total_memory_bytes().unwrap() > s.resident_bytes);
    }
}
