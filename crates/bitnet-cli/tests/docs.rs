//! `completions` and `man`: generated from the clap definitions, they name every command and
//! flag; bash loads the script; an unknown command page is an error (exit 2).

mod common;

use common::{bin, run_ok};

const COMMANDS: &[&str] = &["inspect", "convert", "verify", "check", "build"];

#[test]
fn completions_name_every_command_and_flag() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_ok(bin().args(["completions", shell]));
        let text = String::from_utf8(out.stdout).expect("utf-8");
        for c in COMMANDS {
            assert!(text.contains(c), "{shell}: {c} missing");
        }
        for flag in [
            "block-size",
            "table-block-size",
            "max-rel-error",
            "external-data",
        ] {
            assert!(text.contains(flag), "{shell}: --{flag} missing");
        }
    }
}

#[test]
fn bash_loads_the_completion_script() {
    let out = run_ok(bin().args(["completions", "bash"]));
    let script = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(script.path(), &out.stdout).expect("write script");
    // The function the script registers for bitnet-onnx, asked to complete
    // `bitnet-onnx conv` and `bitnet-onnx convert --block-`.
    let probe = format!(
        "source {}\n\
         f=$(complete -p bitnet-onnx | sed -E 's/.*-F ([^ ]+).*/\\1/')\n\
         COMP_WORDS=(bitnet-onnx conv); COMP_CWORD=1; $f bitnet-onnx conv bitnet-onnx; echo \"${{COMPREPLY[@]}}\"\n\
         COMP_WORDS=(bitnet-onnx convert --block-); COMP_CWORD=2; $f bitnet-onnx --block- convert; echo \"${{COMPREPLY[@]}}\"\n",
        script.path().display()
    );
    let r = std::process::Command::new("bash")
        .args(["--norc", "-c", &probe])
        .output()
        .expect("run bash");
    let text = String::from_utf8_lossy(&r.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        r.status.success() && lines.len() == 2,
        "{text}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(lines[0].trim(), "convert");
    assert_eq!(lines[1].trim(), "--block-size");
}

#[test]
fn man_pages_for_the_tool_and_each_command() {
    let out = run_ok(bin().arg("man"));
    let page = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        page.starts_with(".ie") || page.contains(".TH bitnet-onnx 1"),
        "{page}"
    );
    for c in COMMANDS {
        assert!(page.contains(c), "{c} missing from bitnet-onnx(1)");
        let out = run_ok(bin().args(["man", c]));
        let sub = String::from_utf8(out.stdout).expect("utf-8");
        assert!(sub.contains(&format!(".TH bitnet-onnx-{c} 1")), "{sub}");
    }
    let convert = String::from_utf8(run_ok(bin().args(["man", "convert"])).stdout).expect("utf-8");
    assert!(convert.contains("block\\-size"), "{convert}");
    let bad = bin().args(["man", "nope"]).output().expect("run");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("'nope'") && err.contains("convert"), "{err}");
}

/// docs/cli-help.md is the `--help` of the tool and of each command, as the binary prints it:
/// regenerate it with `BLESS=1 cargo test -p bitnet-cli --test docs`.
#[test]
fn cli_help_doc_is_what_the_binary_prints() {
    let mut doc = String::from(
        "# `bitnet-onnx --help`, for every command\n\n\
         Generated from the binary's clap definitions by \
         `BLESS=1 cargo test -p bitnet-cli --test docs`; the test suite fails when this file \
         differs from what the binary prints. [`cli.md`](cli.md) explains each flag and report \
         field.\n",
    );
    let pages: Vec<(String, Vec<&str>)> = std::iter::once(("bitnet-onnx".to_string(), vec![]))
        .chain(
            COMMANDS
                .iter()
                .chain(["completions", "man"].iter())
                .map(|c| (format!("bitnet-onnx {c}"), vec![*c])),
        )
        .collect();
    for (title, args) in &pages {
        let out = run_ok(bin().args(args).arg("--help"));
        let text = String::from_utf8(out.stdout).expect("utf-8 help");
        doc.push_str(&format!(
            "\n## `{title}`\n\n```text\n{}\n```\n",
            text.trim_end()
        ));
    }
    let path = common::workspace().join("docs/cli-help.md");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &doc).expect("write docs/cli-help.md");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == doc,
        "{} is not what the binary prints: regenerate it with \
         `BLESS=1 cargo test -p bitnet-cli --test docs`",
        path.display()
    );
}
