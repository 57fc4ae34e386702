//! `volctl logs POD [-c C] [-f] [--previous] [--tail N]`: a container's stdout and stderr from the
//! files strata-node writes, one per run
//! (`<state>/logs/<ns>_<pod>_<uid>/<container>/<restart>.log`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use std::io::Write as _;
use strata_store::EmbeddedStore;

use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::container_ref::{self, ContainerRef};

/// Print the logs of a container in a pod: its newest run (a running one, or the last
/// that ended), or the run before with --previous.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pod name.
    pod: String,
    /// Container name; the pod's first container when omitted.
    #[arg(short, long)]
    container: Option<String>,
    /// Keep printing what the running container writes, until it ends.
    #[arg(short, long)]
    follow: bool,
    /// The previous run of the container (before its last restart).
    #[arg(short, long)]
    previous: bool,
    /// Namespace of the pod.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Only the last N lines of the run's output (then, with -f, what follows); -1: all.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    tail: i64,
}

/// Where the last `n` lines of `file` begin (a final newline ends the last line, it does
/// not start another), read backwards in blocks: a long log is not read whole.
fn tail_offset(file: &mut std::fs::File, n: u64) -> std::io::Result<u64> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let len = file.seek(SeekFrom::End(0))?;
    if n == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut end = len;
    let mut seen = 0;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            if *b == b'\n' && at + 1 != len {
                seen += 1;
                if seen == n {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// The runs that have a log file, oldest first.
fn runs(dir: &Path) -> anyhow::Result<Vec<i32>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out: Vec<i32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<i32>()
                .ok()
        })
        .filter(|n| *n >= 0)
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The log file of the run to show.
fn pick(state: &Path, c: &ContainerRef, previous: bool) -> anyhow::Result<(i32, PathBuf)> {
    let dir = strata_node::layout::pod_logs(state, &c.namespace, &c.pod, &c.uid).join(&c.container);
    let runs = runs(&dir)?;
    let run = if previous {
        runs.iter().rev().nth(1).copied().with_context(|| {
            format!(
                "previous terminated container {:?} in pod {:?} not found",
                c.container, c.pod
            )
        })?
    } else {
        match runs.last() {
            Some(n) => *n,
            None => bail!(
                "container {:?} in pod {:?} {}",
                c.container,
                c.pod,
                c.not_running()
            ),
        }
    };
    let path =
        strata_node::layout::container_log(state, &c.namespace, &c.pod, &c.uid, &c.container, run);
    Ok((run, path))
}

pub async fn run(store: &EmbeddedStore, state: &Path, args: Args) -> anyhow::Result<()> {
    let c = container_ref::resolve(store, &args.namespace, &args.pod, args.container.as_deref())
        .await?;
    let (run, path) = pick(state, &c, args.previous)?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    if let Ok(n) = u64::try_from(args.tail) {
        let mut f = file.try_clone().await?.into_std().await;
        let at = tokio::task::spawn_blocking(move || tail_offset(&mut f, n))
            .await?
            .with_context(|| format!("reading {}", path.display()))?;
        file.seek(std::io::SeekFrom::Start(at)).await?;
    }
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    let id = strata_node::layout::container_id(&c.uid, &c.container, run);
    let mut ended = !args.follow || args.previous || c.running_id() != Some(id.as_str());
    loop {
        let n = file
            .read(&mut buf)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if ended {
            return Ok(());
        }
        // Caught up with a running container: wait for more, and stop once this run has
        // ended (one last read takes what it wrote before).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = container_ref::resolve(store, &c.namespace, &c.pod, Some(&c.container)).await;
        ended = now.map_or(true, |n| {
            n.uid != c.uid || n.running_id() != Some(id.as_str())
        });
        // A file replaced under us (the pod deleted and its logs removed) ends too.
        let pos = file.stream_position().await?;
        if tokio::fs::metadata(&path)
            .await
            .map_or(true, |m| m.len() < pos)
        {
            ended = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(text: &str, n: u64) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, text).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let at = tail_offset(&mut f, n).unwrap() as usize;
        text[at..].to_string()
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc\n", 1), "c\n");
        assert_eq!(tail("a\nb\nc", 1), "c");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\nc\n", 3), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 9), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 0), "");
        assert_eq!(tail("", 3), "");
        assert_eq!(tail("\n\n", 1), "\n");
        // Across the 64 KiB blocks it reads backwards in.
        let long: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail(&long, 2), "line 19998\nline 19999\n");
        assert_eq!(tail(&long, 20_000), long);
    }
}
