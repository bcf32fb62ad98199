//! The flag reference cannot drift from the code: every long flag that `chorus <sub> --help`
//! prints is in that subcommand's table in docs/configuration.md (`chorus bench`'s in
//! docs/benchmarks.md, which documents the harness), and every flag those tables name exists.
//! Likewise docs/architecture.md's module table lists exactly the top-level modules that each
//! crate's lib.rs (or main.rs) declares.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use support::{chorus_bin, repo_root};

/// Subcommands documented in docs/configuration.md, each in a `## \`chorus <sub>\`` section.
const CONFIGURED: [&str; 8] = [
    "up",
    "worker",
    "coordinator",
    "status",
    "models",
    "drain",
    "validate",
    "reload",
];

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

/// The top-level modules `root` (a crate's lib.rs or main.rs) declares: `mod x;` and
/// `pub mod x;` at column 0, whatever `#[cfg]` stands above them.
fn declared_modules(root: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_to_string(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .lines()
        .filter_map(|line| {
            let line = line
                .strip_prefix("pub ")
                .or_else(|| line.strip_prefix("pub(crate) "))
                .unwrap_or(line);
            let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// The module rows of docs/architecture.md's "Crates and modules" table, by crate directory:
/// a `| **`crates/x`** |` row starts a crate, and each `| `name.rs` |` or `| `name/` |` row
/// under it is a module (`main.rs` or `lib.rs` is the crate root itself).
fn documented_modules(doc: &str) -> BTreeMap<String, Vec<String>> {
    let heading = "## Crates and modules";
    let start = doc
        .find(heading)
        .expect("docs/architecture.md has a `## Crates and modules` section");
    let body = &doc[start + heading.len()..];
    let section = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut crates: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in section.lines() {
        let Some(cell) = line.strip_prefix("| ").and_then(|l| l.split(" |").next()) else {
            continue;
        };
        if let Some(dir) = cell
            .strip_prefix("**`crates/")
            .and_then(|c| c.strip_suffix("`**"))
        {
            current = Some(dir.to_string());
            crates.entry(dir.to_string()).or_default();
        } else if let (Some(dir), Some(name)) = (
            &current,
            cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')),
        ) {
            let module = name.strip_suffix(".rs").or(name.strip_suffix('/'));
            let module = module.unwrap_or_else(|| panic!("`{name}` is not a file or folder"));
            if module != "main" && module != "lib" {
                crates.get_mut(dir).unwrap().push(module.to_string());
            }
        }
    }
    crates
}

#[test]
fn the_module_table_lists_every_top_level_module_of_every_crate() {
    let documented = documented_modules(&read_doc("architecture.md"));
    let mut problems = Vec::new();
    let crates_dir = repo_root().join("crates");
    let mut dirs: Vec<_> = std::fs::read_dir(&crates_dir)
        .expect("crates/")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let root = ["src/lib.rs", "src/main.rs"]
            .iter()
            .map(|file| dir.join(file))
            .find(|path| path.is_file())
            .unwrap_or_else(|| panic!("crates/{name} has no src/lib.rs or src/main.rs"));
        let declared = declared_modules(&root);
        let Some(rows) = documented.get(&name) else {
            problems.push(format!(
                "crates/{name} has no `| **`crates/{name}`** |` row in docs/architecture.md"
            ));
            continue;
        };
        let listed: BTreeSet<String> = rows.iter().cloned().collect();
        if listed.len() != rows.len() {
            problems.push(format!("crates/{name}: a module is listed twice: {rows:?}"));
        }
        for module in declared.difference(&listed) {
            problems.push(format!(
                "crates/{name}: module `{module}` is missing from docs/architecture.md's module table"
            ));
        }
        for module in listed.difference(&declared) {
            problems.push(format!(
                "docs/architecture.md lists `{module}` in crates/{name}, whose {} declares no such module",
                root.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    for name in documented.keys() {
        if !crates_dir.join(name).join("Cargo.toml").is_file() {
            problems.push(format!(
                "docs/architecture.md lists crates/{name}, which does not exist"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn module_declarations_and_table_rows_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib.rs");
    std::fs::write(
        &lib,
        "//! x\npub mod alpha;\n#[cfg(test)]\nmod testing;\npub(crate) mod gamma;\nmod inline {\n    mod nested;\n}\n",
    )
    .unwrap();
    assert_eq!(
        declared_modules(&lib).into_iter().collect::<Vec<_>>(),
        ["alpha", "gamma", "testing"]
    );
    let doc = "## Crates and modules\n\n| crate / module | job |\n|---|---|\n| **`crates/a`** | a |\n| `main.rs` | root |\n| `x.rs` | x |\n| `y/` | y, not `z.rs` |\n\n## Next\n| `w.rs` | w |\n";
    let modules = documented_modules(doc);
    assert_eq!(modules.len(), 1);
    assert_eq!(modules["a"], ["x", "y"]);
}
