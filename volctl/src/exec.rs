//! `volctl exec POD [-c C] [-i] -- CMD [ARGS...]`: runs a process in a running container
//! through the runtime's exec (`strata-runtime exec`, libcontainer's tenant builder),
//! with the container's user, environment and namespaces; volctl exits with its code.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context as _, bail};
use strata_runtime::{ExecOptions, Helper};
use strata_store::EmbeddedStore;

use crate::container_ref;

/// Run a command in a running container of a pod; exits with the command's status.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pod name.
    pod: String,
    /// Container name; the pod's first container when omitted.
    #[arg(short, long)]
    container: Option<String>,
    /// Pass volctl's standard input to the command (otherwise it reads nothing).
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Namespace of the pod.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// A command's own exit status for volctl to exit with; not an error to print.
#[derive(Debug)]
pub struct ExitWith(pub u8);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command exited with {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

pub async fn run(store: &EmbeddedStore, state: &Path, args: Args) -> anyhow::Result<()> {
    let c = container_ref::resolve(store, &args.namespace, &args.pod, args.container.as_deref())
        .await?;
    let Some(id) = c.running_id() else {
        bail!(
            "cannot exec in container {:?} of pod {:?}: it {}",
            c.container,
            c.pod,
            c.not_running()
        );
    };
    let helper = Helper::new(
        crate::up::find_binary("strata-runtime")?,
        strata_node::layout::runtime_root(state),
    );
    let opts = ExecOptions {
        args: args.command.clone(),
        ..Default::default()
    };
    let mut cmd = helper.exec_command(id, &opts);
    cmd.stdin(if args.stdin {
        Stdio::inherit()
    } else {
        Stdio::null()
    });
    // Waiting on the child blocks: off the async workers.
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .context("waiting for strata-runtime exec")?
        .context("running strata-runtime exec")?;
    let code = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    if code == 0 {
        Ok(())
    } else {
        Err(ExitWith(u8::try_from(code).unwrap_or(255)).into())
    }
}
