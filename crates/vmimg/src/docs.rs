//! `vmimg completions SHELL` and `vmimg man [DIR]`: shell completions
//! (clap_complete) and man pages (clap_mangen), made from the same command
//! definitions as `--help`, so they cannot drift from it.

use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;

/// Writes SHELL's completion script for vmimg to stdout.
pub fn completions<C: CommandFactory>(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut C::command(), "vmimg", &mut std::io::stdout());
}

/// Writes vmimg.1 to stdout, or, with `dir`, a page per command
/// (vmimg.1, vmimg-pull.1, vmimg-instance-create.1, …) into `dir`.
pub fn man<C: CommandFactory>(dir: Option<&Path>) -> Result<()> {
    let command = C::command();
    match dir {
        None => Ok(clap_mangen::Man::new(command).render(&mut std::io::stdout())?),
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}
