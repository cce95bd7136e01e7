//! The sink: a thread that writes the workers' lines out, so that slow output (a terminal, a
//! pipe to a log shipper, a full disk) slows this thread only, never a worker or the
//! supervisor's event loop.
//!
//! Out on the supervisor's own stdout and stderr (a worker's stdout lines on stdout, its stderr
//! lines on stderr), each line prefixed with its slot and pid (`slot 2 pid 4711 | ...`, the
//! slot coloured on a terminal), or as one JSON object per line with `--log-format json`
//! (`{"timestamp", "slot", "pid", "stream", "line"}`). With `--log-dir`, also into one file per
//! slot (`slot-N.log`, mode 0600) rotated by size: `slot-N.log` becomes `slot-N.log.1`, and so
//! on up to `--log-keep` files.

use std::{
    fs::File,
    io::{BufWriter, IsTerminal as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        mpsc::{sync_channel, Receiver, SyncSender},
        Arc,
    },
    thread::JoinHandle,
};

use super::{Error, Line, Result, Stream, SINK_QUEUE};

/// Bytes gathered per output before a write.
const BATCH: usize = 64 * 1024;

/// Where and how the sink writes.
#[derive(Clone, Debug)]
pub struct Options {
    pub json: bool,
    /// One file per slot in this directory.
    pub dir: Option<PathBuf>,
    /// A slot's file is rotated before it would grow past this many bytes.
    pub max_size: u64,
    /// Rotated files kept per slot.
    pub keep: u32,
}

/// Checks `opts` and creates the log directory (0700) if it is missing: run with the other
/// start-up checks.
pub fn prepare(opts: &Options) -> Result<()> {
    let Some(dir) = &opts.dir else {
        return Ok(());
    };
    if opts.max_size < 4096 {
        return Err(Error::MaxSize(opts.max_size));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::CreateDirectory {
            dir: dir.clone(),
            source,
        })?;
    // A probe write now rather than a silent failure at the first line.
    let probe = dir.join(".balancer-write-test");
    File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|source| Error::WriteDirectory {
            dir: dir.clone(),
            source,
        })?;
    Ok(())
}

/// Starts the sink thread; lines sent to the returned sender are written out. The thread ends
/// once every sender is dropped and what they sent is written.
pub fn start(opts: Options) -> Result<(SyncSender<Arc<Line>>, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(SINK_QUEUE);
    let thread = std::thread::Builder::new()
        .name("balancer-logs".into())
        .spawn(move || run(opts, rx))
        .map_err(Error::Thread)?;
    Ok((tx, thread))
}

fn run(opts: Options, rx: Receiver<Arc<Line>>) {
    let colour = std::io::stderr().is_terminal();
    let mut files: Vec<Option<Rotating>> = Vec::new();
    // Whole lines only, written together when the queue runs dry or a buffer fills: one write
    // per batch rather than per line, and lines of different workers never interleave mid-line.
    let mut out = BufWriter::with_capacity(BATCH, std::io::stdout());
    let mut err = BufWriter::with_capacity(BATCH, std::io::stderr());
    let mut text = String::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(line) = next {
            text.clear();
            if opts.json {
                json(&line, &mut text);
            } else {
                human(&line, colour, &mut text);
            }
            let _ = match line.stream {
                Stream::Stdout => out.write_all(text.as_bytes()),
                Stream::Stderr => err.write_all(text.as_bytes()),
            };
            if let Some(dir) = &opts.dir {
                let i = line.slot as usize;
                if files.len() <= i {
                    files.resize_with(i + 1, || None);
                }
                let file = files[i].get_or_insert_with(|| {
                    Rotating::new(
                        dir.join(format!("slot-{}.log", line.slot)),
                        opts.max_size,
                        opts.keep,
                    )
                });
                text.clear();
                timestamp(&mut text);
                let stream = match line.stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                };
                text.push_str(&format!(" {} {stream} {}\n", line.pid, line.line));
                if let Err(e) = file.write(text.as_bytes()) {
                    log::warn!("slot {}: cannot write its log file: {e}", line.slot);
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        let _ = err.flush();
        for file in files.iter_mut().flatten() {
            if let Err(e) = file.flush() {
                log::warn!("cannot write a log file: {e}");
            }
        }
    }
}

/// `slot 2 pid 4711 | text`, the slot coloured on a terminal (six colours, by slot): the
/// supervisor's output and `balancer logs` alike.
pub fn human(line: &Line, colour: bool, out: &mut String) {
    if colour {
        let c = 31 + line.slot % 6;
        out.push_str(&format!(
            "\x1b[{c}mslot {} pid {}\x1b[0m | {}\n",
            line.slot, line.pid, line.line
        ));
    } else {
        out.push_str(&format!(
            "slot {} pid {} | {}\n",
            line.slot, line.pid, line.line
        ));
    }
}

fn json(line: &Line, out: &mut String) {
    let mut ts = String::new();
    timestamp(&mut ts);
    let value = serde_json::json!({
        "timestamp": ts,
        "slot": line.slot,
        "pid": line.pid,
        "stream": line.stream,
        "line": line.line,
    });
    out.push_str(&value.to_string());
    out.push('\n');
}

/// RFC 3339, UTC, as the supervisor's own log records carry it.
fn timestamp(out: &mut String) {
    use tracing_subscriber::fmt::{
        format::Writer,
        time::{FormatTime as _, SystemTime},
    };
    let _ = SystemTime.format_time(&mut Writer::new(out));
}

/// A file that is rotated before it would grow past `max` bytes.
pub struct Rotating {
    path: PathBuf,
    max: u64,
    keep: u32,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl Rotating {
    pub fn new(path: PathBuf, max: u64, keep: u32) -> Rotating {
        Rotating {
            path,
            max,
            keep,
            file: None,
            size: 0,
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let file = open(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(BufWriter::with_capacity(BATCH, file));
        }
        if self.size > 0 && self.size + bytes.len() as u64 > self.max {
            self.rotate()?;
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }

    /// `slot-N.log.(k-1)` → `.k`, ..., `slot-N.log` → `.1`, the oldest dropped.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        let numbered = |k: u32| PathBuf::from(format!("{}.{k}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for k in (1..self.keep).rev() {
                let from = numbered(k);
                if from.exists() {
                    std::fs::rename(&from, numbered(k + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = Some(BufWriter::with_capacity(BATCH, open(&self.path)?));
        self.size = 0;
        Ok(())
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_every_file_under_the_limit_and_at_most_keep_of_them() {
        let dir = std::env::temp_dir().join(format!("balancer-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("slot-0.log");
        let mut f = Rotating::new(path.clone(), 1000, 2);
        let line = [b'x'; 99];
        for _ in 0..100 {
            f.write(&line).unwrap();
            f.write(b"\n").unwrap();
        }
        f.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["slot-0.log", "slot-0.log.1", "slot-0.log.2"]);
        for n in &names {
            let len = std::fs::metadata(dir.join(n)).unwrap().len();
            assert!(len <= 1000, "{n}: {len} bytes");
        }
        // The newest lines are in the live file, whole.
        let live = std::fs::read(&path).unwrap();
        assert_eq!(live.len() % 100, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn human_lines_carry_slot_and_pid() {
        let line = Line {
            seq: 1,
            slot: 3,
            pid: 77,
            stream: Stream::Stderr,
            line: "boom".into(),
        };
        let mut out = String::new();
        human(&line, false, &mut out);
        assert_eq!(out, "slot 3 pid 77 | boom\n");
        out.clear();
        json(&line, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["slot"].as_u64(), v["pid"].as_u64(), v["stream"].as_str()),
            (Some(3), Some(77), Some("stderr"))
        );
        assert_eq!(v["line"], "boom");
        assert!(v["timestamp"].as_str().unwrap().starts_with("20"));
    }
}
