//! Compiles `proto/churnsignal/v1/*.proto` with protox (pure Rust, no system `protoc`),
//! and passes the commit being built to the crate (`churnsignal_build_info`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    commit();
    let files = [
        "proto/churnsignal/v1/events.proto",
        "proto/churnsignal/v1/alerts.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}

/// `CHURNSIGNAL_COMMIT`: the short hash of `HEAD` when built from a git checkout
/// (`-dirty` with uncommitted changes to tracked files); unset otherwise.
fn commit() {
    use std::process::Command;
    for f in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    if let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"]).filter(|h| !h.is_empty()) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        let suffix = if dirty { "-dirty" } else { "" };
        println!("cargo:rustc-env=CHURNSIGNAL_COMMIT={hash}{suffix}");
    }
}
