//! The broker process seen through /proc: found by its listening port, then sampled for CPU
//! time (utime + stime) and resident memory (VmRSS).
//!
//! Finding a process by port: /proc/net/tcp{,6} lists sockets as
//!
//! ```text
//!   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//!    0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 ...
//! ```
//!
//! with the port in hex after the colon and `0A` meaning LISTEN; the owning process is the one
//! with a file descriptor that links to `socket:[12345]`.

use std::fs;
use std::path::Path;

/// Inodes of the LISTEN sockets bound to `port` in one /proc/net/tcp or tcp6 table.
pub fn listen_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let (_, port_hex) = local.rsplit_once(':')?;
            let local_port = u16::from_str_radix(port_hex, 16).ok()?;
            if local_port != port || *fields.get(3)? != LISTEN {
                return None;
            }
            fields.get(9)?.parse().ok()
        })
        .filter(|&inode| inode != 0)
        .collect()
}

/// The process that holds a LISTEN socket on `port`, if this user may see it.
pub fn find_pid_by_port(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(listen_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if process_holds_any(&entry.path(), &wanted) {
            return Some(pid);
        }
    }
    None
}

fn process_holds_any(proc_dir: &Path, links: &[String]) -> bool {
    let Ok(fds) = fs::read_dir(proc_dir.join("fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .map(|target| links.iter().any(|l| target.as_os_str() == l.as_str()))
            .unwrap_or(false)
    })
}

/// utime + stime in clock ticks from the text of /proc/<pid>/stat.
///
/// The command name (field 2) is in parentheses and may itself hold spaces and parentheses,
/// so fields are counted from the last ')': state is field 3, utime 14, stime 15.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in bytes from the text of /proc/<pid>/status (the kernel reports kB).
pub fn parse_vmrss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second for /proc/<pid>/stat times (100 on every Linux seen so far).
pub fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf reads a constant of the running system and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// One CPU and memory reading of the broker.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

/// The broker process under test.
#[derive(Debug, Clone, Copy)]
pub struct BrokerProbe {
    pub pid: u32,
    ticks_per_s: u64,
}

impl BrokerProbe {
    pub fn new(pid: u32) -> BrokerProbe {
        BrokerProbe {
            pid,
            ticks_per_s: clock_ticks_per_s(),
        }
    }

    /// None once the process is gone or unreadable.
    pub fn sample(&self) -> Option<Sample> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        Some(Sample {
            cpu_s: parse_stat_cpu_ticks(&stat)? as f64 / self.ticks_per_s as f64,
            rss_bytes: parse_vmrss_bytes(&status)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1628 0100007F:D0F2 01 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listen_sockets_on_the_port_are_found() {
        assert_eq!(listen_inodes(TCP, 5672), vec![4242]);
        assert_eq!(listen_inodes(TCP, 22), vec![777]);
        assert!(listen_inodes(TCP, 5673).is_empty());
    }

    #[test]
    fn tcp6_addresses_parse_too() {
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1629 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listen_inodes(tcp6, 5673), vec![99]);
    }

    #[test]
    fn stat_cpu_survives_parentheses_in_the_command_name() {
        let stat = "1234 (beam (smp) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 30 0 100 1000 50";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn vmrss_is_reported_in_bytes() {
        let status = "Name:\tferrymq\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss_bytes(status), Some(2048 * 1024));
        assert_eq!(parse_vmrss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let probe = BrokerProbe::new(std::process::id());
        let sample = probe.sample().expect("own /proc entry");
        assert!(sample.rss_bytes > 0);
        assert!(sample.cpu_s >= 0.0);
    }

    #[test]
    fn a_listening_socket_leads_back_to_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(find_pid_by_port(port), Some(std::process::id()));
    }
}
