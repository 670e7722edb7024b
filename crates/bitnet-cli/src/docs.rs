//! `completions` and `man`: shell completion scripts and man pages generated from the clap
//! definitions, so they list exactly the commands and flags the binary accepts.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::CommandFactory;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// The command whose page to print (`convert` prints bitnet-onnx-convert(1)); the tool's
    /// own page, which lists the commands, when left out.
    pub command: Option<String>,
}

pub fn completions<C: CommandFactory>(args: &CompletionsArgs) -> Result<()> {
    let mut cmd = C::command();
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name.clone(), &mut script);
    if args.shell == clap_complete::Shell::Bash {
        script = fix_bash_labels(&script, &name);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|_| out.flush())
        .context("cannot write to standard output")
}

/// clap_complete 4.6's bash script sets `cmd` to `bitnet__onnx__subcmd__convert` (the `-` of the
/// binary's name made `__`) but labels the matching `case` branch
/// `bitnet__subcmd__onnx__subcmd__convert` (the `-` made the subcommand separator), so no
/// subcommand's flags complete: the labels are rewritten to what `cmd` holds
/// (tests/docs.rs runs the script in bash).
fn fix_bash_labels(script: &[u8], name: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let wrong = name.replace('-', "__subcmd__");
    let right = name.replace('-', "__");
    if wrong == right {
        return script.to_vec();
    }
    text.replace(&format!("{wrong}__subcmd__"), &format!("{right}__subcmd__"))
        .into_bytes()
}

pub fn man<C: CommandFactory>(args: &ManArgs) -> Result<()> {
    let mut cmd = C::command();
    cmd.build();
    let page = match &args.command {
        None => cmd,
        Some(name) => {
            let Some(sub) = cmd.find_subcommand(name) else {
                let names: Vec<_> = cmd.get_subcommands().map(|s| s.get_name()).collect();
                bail!("no command '{name}' (the commands: {})", names.join(", "));
            };
            // Built, a command's display name is `bitnet-onnx-convert`: the page is
            // bitnet-onnx-convert(1), as git names its own.
            sub.clone()
        }
    };
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut buf)
        .context("cannot render the man page")?;
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)
        .and_then(|_| out.flush())
        .context("cannot write to standard output")
}
