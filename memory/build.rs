//! Records the commit the binary is built from, for `memory --version` and `memory_build_info`:
//! `MEMORY_BUILD_COMMIT` if set (a container build has no `.git`), else `git rev-parse`.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MEMORY_BUILD_COMMIT");
    let commit = std::env::var("MEMORY_BUILD_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let git = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
        // Rebuild when HEAD moves (only for files that exist: a missing one would rerun always).
        for file in ["HEAD", "packed-refs"] {
            if git.join(file).exists() {
                println!("cargo:rerun-if-changed={}", git.join(file).display());
            }
        }
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
            && let Some(reference) = head.trim().strip_prefix("ref: ")
            && git.join(reference).exists()
        {
            println!("cargo:rerun-if-changed={}", git.join(reference).display());
        }
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=MEMORY_BUILD_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
