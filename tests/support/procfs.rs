//! What /proc tells about processes: CPU time used, and the tree below a process.

/// CPU seconds (user + system) used so far by `pids`; a process that is gone counts 0.
pub fn cpu_seconds(pids: &[i32]) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // The command name may hold spaces and parentheses: fields count from the last ')'.
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .sum()
}

/// `pid` and every process below it, parents before children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(kids) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            out.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
        i += 1;
    }
    out
}
