//! `tributary completions SHELL` and `tributary man`: scripts a shell
//! really completes with, and a man page that lists every command.

use std::process::Command;

fn tributary(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bash_completes_subcommands_with_the_generated_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tributary.bash");
    std::fs::write(&script, tributary(&["completions", "bash"])).unwrap();
    // What bash does on `tributary co<TAB>`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(tributary co); COMP_CWORD=1; _tributary tributary co tributary; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut offered: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    offered.sort();
    assert_eq!(offered, ["completions", "connections"]);
}

#[test]
fn zsh_and_fish_scripts_name_every_command() {
    let zsh = tributary(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef tributary"), "{zsh}");
    let fish = tributary(&["completions", "fish"]);
    assert!(fish.contains("complete -c tributary"), "{fish}");
    for command in [
        "run",
        "check",
        "poll",
        "status",
        "replay",
        "sql",
        "register",
        "connections",
    ] {
        assert!(zsh.contains(&format!("'{command}:")), "zsh lacks {command}");
        assert!(
            fish.contains(&format!("-a \"{command}\"")),
            "fish lacks {command}"
        );
    }
}

#[test]
fn the_man_page_lists_every_command() {
    let page = tributary(&["man"]);
    assert!(page.contains(".TH tributary 1"), "{page}");
    for command in [
        "run",
        "check",
        "poll",
        "status",
        "replay",
        "sql",
        "connections",
    ] {
        assert!(
            page.contains(&format!("tributary\\-{command}(1)")),
            "{command}"
        );
    }
}
