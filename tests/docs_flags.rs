//! The flag reference cannot drift from the code: every long flag that `chorus <sub> --help`
//! prints is in that subcommand's table in docs/configuration.md (`chorus bench`'s in
//! docs/benchmarks.md, which documents the harness), and every flag those tables name exists.

mod support;

use std::collections::BTreeSet;
use support::{chorus_bin, repo_root};

/// Subcommands documented in docs/configuration.md, each in a `## \`chorus <sub>\`` section.
const CONFIGURED: [&str; 5] = ["up", "worker", "coordinator", "status", "models"];

/// clap's own flags, documented by clap.
const BUILT_IN: [&str; 2] = ["--help", "--version"];

/// Every `--flag` token in `text`.
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let name: String = rest[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let starts_a_word = at == 0 || !rest[..at].ends_with(|c: char| c.is_alphanumeric());
        if starts_a_word && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            flags.insert(format!("--{}", name.trim_end_matches('-')));
        }
        rest = &rest[at + 2 + name.len()..];
    }
    flags
}

/// The long flags `chorus <sub> --help` lists (the first `--flag` of each option line).
fn help_flags(sub: &str) -> BTreeSet<String> {
    let output = std::process::Command::new(chorus_bin())
        .args([sub, "--help"])
        .output()
        .expect("chorus runs");
    assert!(output.status.success(), "chorus {sub} --help failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| flags_in(line.split("  ").next()?).into_iter().next())
        .filter(|flag| !BUILT_IN.contains(&flag.as_str()))
        .collect()
}

fn read_doc(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("docs").join(name)).expect("doc exists")
}

/// The flags named in the first column of the flag tables of `## \`chorus <sub>\``, up to the
/// next `## ` heading.
fn documented_flags(doc: &str, sub: &str) -> BTreeSet<String> {
    let heading = format!("## `chorus {sub}`");
    let start = doc
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/configuration.md has no {heading} section"));
    let body = &doc[start + heading.len()..];
    let section = &body[..body.find("\n## ").unwrap_or(body.len())];
    section
        .lines()
        .filter(|line| line.starts_with("| `--"))
        .flat_map(|line| flags_in(line.split(" | ").next().unwrap_or("")))
        .collect()
}

#[test]
fn every_flag_of_the_configured_subcommands_is_documented_and_exists() {
    let doc = read_doc("configuration.md");
    let mut problems = Vec::new();
    for sub in CONFIGURED {
        let help = help_flags(sub);
        let documented = documented_flags(&doc, sub);
        for flag in help.difference(&documented) {
            problems.push(format!(
                "`chorus {sub} {flag}` is missing from the `chorus {sub}` table of docs/configuration.md"
            ));
        }
        for flag in documented.difference(&help) {
            problems.push(format!(
                "docs/configuration.md documents `{flag}` for `chorus {sub}`, which `chorus {sub} --help` does not list"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_bench_flag_is_documented_in_the_benchmarks_guide() {
    let documented = flags_in(&read_doc("benchmarks.md"));
    let missing: Vec<_> = help_flags("bench")
        .into_iter()
        .filter(|flag| !documented.contains(flag))
        .collect();
    assert!(
        missing.is_empty(),
        "`chorus bench` flags missing from docs/benchmarks.md: {missing:?}"
    );
}

#[test]
fn flags_are_read_as_whole_words() {
    let flags = flags_in("`--etcd-ca <PEM>`, `--etcd` a--b `--log-json`");
    assert_eq!(
        flags.into_iter().collect::<Vec<_>>(),
        ["--etcd", "--etcd-ca", "--log-json"]
    );
}
