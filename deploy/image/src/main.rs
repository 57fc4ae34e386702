//! `strata-build-image`: writes the strata-csi image as an OCI layout (see the library).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Builds the strata-csi container image as an OCI image layout from a built binary and
/// this host's filesystem tools (with their shared libraries). No Docker needed; import
/// the result with e.g. `ctr images import` after archiving it, or `skopeo copy oci:DIR`.
#[derive(Debug, Parser)]
struct Args {
    /// The driver binary (normally target/release/strata-csi).
    #[arg(long)]
    binary: PathBuf,
    /// Another binary to install in /usr/local/bin (repeatable), e.g.
    /// target/release/strata-provisioner for the DaemonSet variant that runs it.
    #[arg(long = "extra-binary")]
    extra_binaries: Vec<PathBuf>,
    /// Output directory, replaced: an OCI image layout (oci-layout, index.json, blobs/).
    #[arg(long)]
    out: PathBuf,
    /// Image reference recorded in index.json.
    #[arg(long, default_value = "localhost/strata/strata-csi:0.1.0")]
    name: String,
    /// A tool to include (repeatable); default: the driver's mkfs/fsck/grow tools.
    #[arg(long = "tool")]
    tools: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tools = if args.tools.is_empty() {
        strata_image_build::DEFAULT_TOOLS
            .iter()
            .map(|t| t.to_string())
            .collect()
    } else {
        args.tools
    };
    let plan = strata_image_build::Plan {
        name: args.name,
        binary: args.binary,
        extra_binaries: args.extra_binaries,
        tools,
        files: strata_image_build::DEFAULT_FILES
            .iter()
            .map(PathBuf::from)
            .collect(),
    };
    let parent = args.out.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let work = tempfile_dir(parent)?;
    let result = strata_image_build::build(&plan, &work, &args.out);
    let _ = std::fs::remove_dir_all(&work);
    result.with_context(|| format!("building {}", args.out.display()))?;
    println!("{} -> {}", plan.name, args.out.display());
    Ok(())
}

/// A fresh work directory next to the output (same filesystem, so no cross-device copy).
fn tempfile_dir(parent: &std::path::Path) -> anyhow::Result<PathBuf> {
    let dir = parent.join(format!(".strata-build-image.{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
