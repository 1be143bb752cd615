//! How many CPU threads llama.cpp should use: the cores other programs leave free. Its threads
//! meet at a barrier after every operation of a decode, so one of them sharing a core with a busy
//! program holds up all of them: fewer threads, each on a free core, decode faster and evenly
//! (measured in docs/benchmarks.md).

use std::time::Duration;

/// CPU time from `/proc/stat`'s first line, in clock ticks: (busy, all). Time at a positive nice
/// value counts as idle: such work yields to ours.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = v[..] else {
        return None;
    };
    let busy = user + system + irq + softirq + steal;
    Some((busy, busy + nice + idle + iowait))
}

/// This process's CPU time (all its threads), in clock ticks. Not its children's: those come
/// in whole when a child is reaped (a PDF reader's ten seconds inside a quarter-second window),
/// while a running reader keeps a core busy like any other program.
fn own_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which may hold spaces, closed by the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 from the state.
    (11..=12).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// The cores other programs kept busy over `window`, as a fraction of `cores` (None where
/// `/proc` cannot tell).
pub fn busy_elsewhere(cores: u32, window: Duration) -> Option<f64> {
    let (busy0, all0) = machine_ticks()?;
    let own0 = own_ticks()?;
    std::thread::sleep(window);
    let (busy1, all1) = machine_ticks()?;
    let own1 = own_ticks()?;
    let all = all1.checked_sub(all0).filter(|&d| d > 0)?;
    let others = busy1
        .saturating_sub(busy0)
        .saturating_sub(own1.saturating_sub(own0));
    Some((others as f64 / all as f64 * f64::from(cores)).min(f64::from(cores)))
}

/// The threads for llama.cpp on this machine now: its cores less those other programs keep
/// busy (at least one), and why, in words for the log.
pub fn free_threads() -> (u32, String) {
    let cores =
        std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2));
    match busy_elsewhere(cores, Duration::from_millis(250)) {
        Some(busy) => {
            let taken = threads_for(cores, busy);
            (
                taken,
                format!("{cores} cores, {busy:.1} busy with other programs"),
            )
        }
        None => (cores, format!("{cores} cores")),
    }
}

/// `cores` less the busy ones, rounded so that a core mostly taken counts as taken.
fn threads_for(cores: u32, busy: f64) -> u32 {
    let taken = (busy + 0.3).floor().max(0.0) as u32;
    cores.saturating_sub(taken).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cores_are_left_to_their_programs() {
        assert_eq!(threads_for(2, 0.0), 2);
        assert_eq!(
            threads_for(2, 0.5),
            2,
            "a core half busy is still worth a thread"
        );
        assert_eq!(threads_for(2, 0.8), 1);
        assert_eq!(threads_for(2, 1.0), 1);
        assert_eq!(threads_for(2, 2.0), 1, "one thread at least");
        assert_eq!(threads_for(16, 3.9), 12);
    }

    #[test]
    fn the_machine_and_this_process_can_be_read() {
        assert!(machine_ticks().is_some_and(|(busy, all)| busy <= all));
        assert!(own_ticks().is_some());
        let busy = busy_elsewhere(2, Duration::from_millis(50)).unwrap();
        assert!((0.0..=2.0).contains(&busy));
    }
}
