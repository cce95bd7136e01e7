//! A process's children, from each of its threads' `children` list in /proc: a child is listed
//! under the thread that forked it, so a multi-threaded process's are spread over its threads.

/// The children of every thread of process `pid`; none if it is gone.
pub fn of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = procfs::process::Process::new(pid).and_then(|p| p.tasks()) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| task.children().ok())
        .flatten()
        .map(|c| c as i32)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_a_child_and_nothing_of_a_gone_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mine = super::of(std::process::id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(mine.contains(&(child.id() as i32)), "{mine:?}");
        assert!(super::of(i32::MAX).is_empty());
    }
}
