//! Runs a program for a check: bounded in time (killed after the limit) and in output (at
//! most [`MAX_OUTPUT`] bytes of each stream kept).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output kept per stream.
pub const MAX_OUTPUT: u64 = 4 * 1024 * 1024;

/// What a finished program printed.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end, or kills it after `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let reader = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(s) = s {
                let mut s = s.take(MAX_OUTPUT);
                let _ = s.read_to_end(&mut v);
                // Drain the rest so the program does not block on a full pipe.
                let _ = std::io::copy(&mut s.into_inner(), &mut std::io::sink());
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {limit:?}"));
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    Ok(Output {
        success: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_status_and_time_limit() {
        let o =
            run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), Duration::from_secs(10)).unwrap();
        assert_eq!((o.success, o.stdout.as_str(), o.stderr.as_str()), (false, "out\n", "err\n"));
        let e = run(Command::new("sleep").arg("5"), Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        assert!(run(&mut Command::new("/nonexistent/x"), Duration::from_secs(1)).unwrap_err().contains("cannot run"));
    }
}
