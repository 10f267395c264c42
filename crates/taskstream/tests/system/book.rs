//! The book's runnable shell blocks, run as a reader runs them: against a
//! fresh `taskstream up` (the real binary), one shell per lesson so that a
//! variable set in one block is there in the next, each block's exit status
//! checked and its key output compared with the `<!-- expect: … -->` lines
//! that follow it in the lesson.
//!
//! A block is runnable when its info string is `sh,runnable` (or `bash,…`).
//! The lessons talk to `localhost:8080`, `up`'s default; the test's `up`
//! listens on a free port, and the blocks are pointed at it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::binary::{launch, up_args};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// One runnable block of a lesson.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    code: String,
    /// Text its output must contain.
    expects: Vec<String>,
}

/// The runnable blocks of one markdown file, with their expectations.
fn runnable_blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let mut attributes = info.split(',').map(str::trim);
        let language = attributes.next().unwrap_or_default();
        let runnable = matches!(language, "sh" | "bash") && attributes.any(|a| a == "runnable");
        let start = i;
        i += 1;
        let mut code = String::new();
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            code.push_str(lines[i]);
            code.push('\n');
            i += 1;
        }
        i += 1; // the closing fence
        if !runnable {
            continue;
        }
        let mut expects = Vec::new();
        let mut j = i;
        while j < lines.len() {
            let line = lines[j].trim();
            if line.is_empty() {
                j += 1;
                continue;
            }
            match line
                .strip_prefix("<!-- expect:")
                .and_then(|rest| rest.strip_suffix("-->"))
            {
                Some(text) => {
                    expects.push(text.trim().to_owned());
                    j += 1;
                }
                None => break,
            }
        }
        blocks.push(Block {
            line: start + 1,
            code,
            expects,
        });
    }
    blocks
}

/// The lessons, in the order of the book's table of contents.
fn lessons(src: &Path) -> Vec<PathBuf> {
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).expect("book/src/SUMMARY.md");
    summary
        .lines()
        .filter_map(|line| {
            let target = line.split("](").nth(1)?.split(')').next()?;
            (!target.is_empty()).then(|| src.join(target))
        })
        .collect()
}

const MARK: &str = "@@taskstream-book-block@@";

/// Runs `blocks` in one bash, in `workdir`, against the system at `http`
/// (host:port); returns each block's output, or why the lesson failed.
async fn run_lesson(
    blocks: &[Block],
    workdir: &Path,
    http: &str,
    data_dir: &Path,
    shims: &Path,
) -> Result<Vec<String>, String> {
    let mut script = String::from("set -eo pipefail\n");
    for (n, block) in blocks.iter().enumerate() {
        // The newline first: a block's output need not end with one.
        script.push_str(&format!("printf '\\n{MARK} {n}\\n'\n"));
        script.push_str(&block.code.replace("localhost:8080", http));
    }
    script.push_str(&format!("printf '\\n{MARK} end\\n'\n"));
    let bin_dir = Path::new(BIN).parent().expect("the binary has a directory");
    let path = format!(
        "{}:{}:{}",
        shims.display(),
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // `timeout` ends a hung lesson (and its children) after ten minutes.
    let mut command = std::process::Command::new("timeout");
    command
        .args(["--kill-after=10", "600", "bash", "-c", &script])
        .current_dir(workdir)
        .env("PATH", path)
        .env("TASKSTREAM_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| format!("the lesson's runner panicked: {e}"))?
        .map_err(|e| format!("cannot run bash under timeout: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut outputs = vec![String::new(); blocks.len()];
    let mut current: Option<usize> = None;
    let mut finished = false;
    for line in stdout.lines() {
        if let Some(mark) = line.strip_prefix(MARK) {
            match mark.trim() {
                "end" => finished = true,
                n => current = n.parse().ok(),
            }
            continue;
        }
        if let Some(n) = current {
            outputs[n].push_str(line);
            outputs[n].push('\n');
        }
    }
    if !output.status.success() || !finished {
        let n = current.unwrap_or(0);
        return Err(format!(
            "the block at line {} exited with {}\n--- its output ---\n{}--- stderr ---\n{stderr}",
            blocks[n].line, output.status, outputs[n]
        ));
    }
    Ok(outputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runnable_block_in_the_book_succeeds_against_a_fresh_up_with_the_output_it_promises()
{
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../book/src");
    let lessons = lessons(&src);
    assert!(
        lessons.len() >= 4,
        "the table of contents lists the lessons"
    );
    let with_blocks: Vec<(PathBuf, Vec<Block>)> = lessons
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let blocks = runnable_blocks(&text);
            (path, blocks)
        })
        .filter(|(_, blocks)| !blocks.is_empty())
        .collect();
    assert!(
        !with_blocks.is_empty(),
        "the book has runnable blocks to check"
    );

    // `python` in a block is a Python with confluent-kafka-python, as the
    // lessons ask the reader to install.
    let shims = tempfile::tempdir().unwrap();
    let python = crate::interop::python();
    if let Some(python) = &python {
        let shim = shims.path().join("python");
        std::fs::write(
            &shim,
            format!("#!/bin/sh\nexec '{}' \"$@\"\n", python.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");

    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let (_up, first) = tokio::task::spawn_blocking({
        let args: Vec<String> = up_args(data_dir).into_iter().map(String::from).collect();
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            launch(&args, "warn", Stdio::inherit())
        }
    })
    .await
    .unwrap();
    let http = first
        .strip_prefix("http: http://")
        .expect("up's first line is its HTTP endpoint")
        .to_owned();

    let mut failures = Vec::new();
    for (path, blocks) in &with_blocks {
        let name = path
            .strip_prefix(&src)
            .unwrap_or(path)
            .display()
            .to_string();
        if python.is_none() && blocks.iter().any(|b| b.code.contains("python ")) {
            crate::interop::skip_or_fail(&format!("the runnable blocks of {name}"));
            continue;
        }
        // Blocks run where a reader runs them: a directory with the
        // repository's examples/, schemas/ and skills/ (a scratch one, for the files
        // they write).
        let workdir = tempfile::tempdir().unwrap();
        for shared in ["examples", "schemas", "skills"] {
            std::os::unix::fs::symlink(repo.join(shared), workdir.path().join(shared)).unwrap();
        }
        match run_lesson(blocks, workdir.path(), &http, data.path(), shims.path()).await {
            Err(why) => failures.push(format!("{name}: {why}")),
            Ok(outputs) => {
                for (block, output) in blocks.iter().zip(outputs) {
                    for expected in &block.expects {
                        if !output.contains(expected.as_str()) {
                            failures.push(format!(
                                "{name}: the block at line {} should print {expected:?}; it printed:\n{output}",
                                block.line
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn only_blocks_marked_runnable_are_run_and_each_takes_the_expectations_that_follow_it() {
    let lesson = "\
Intro.

```sh,runnable
echo one
```

<!-- expect: one -->
<!-- expect: o -->

```sh
echo not run
```

```rust
fn main() {}
```

```bash,runnable
echo two
echo three
```
Text.
<!-- expect: not attached -->
";
    let blocks = runnable_blocks(lesson);
    assert_eq!(
        blocks,
        vec![
            Block {
                line: 3,
                code: "echo one\n".into(),
                expects: vec!["one".into(), "o".into()],
            },
            Block {
                line: 18,
                code: "echo two\necho three\n".into(),
                expects: vec![],
            },
        ]
    );
}

#[test]
fn the_table_of_contents_names_every_lesson_that_exists_and_no_missing_file() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../book/src");
    for lesson in lessons(&src) {
        assert!(
            lesson.is_file(),
            "{} is listed but missing",
            lesson.display()
        );
    }
}

#[test]
fn every_written_lesson_says_what_the_reader_will_do_and_ends_with_three_try_with_ai_prompts_and_what_to_read_next(
) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../book/src");
    let mut problems = Vec::new();
    let lessons: Vec<PathBuf> = lessons(&src)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/part-"))
        .collect();
    assert!(!lessons.is_empty(), "the book has written lessons");
    for lesson in lessons {
        let text = std::fs::read_to_string(&lesson).unwrap();
        let name = lesson.strip_prefix(&src).unwrap().display().to_string();
        if !text.contains("**After this lesson you will be able to") {
            problems.push(format!(
                "{name}: no \"After this lesson you will be able to\""
            ));
        }
        let Some((_, prompts)) = text.split_once("\n## Try With AI\n") else {
            problems.push(format!("{name}: no \"## Try With AI\" section"));
            continue;
        };
        let prompts = prompts.split("\n## ").next().unwrap_or_default();
        let numbered = prompts
            .lines()
            .filter(|l| {
                ["1. ", "2. ", "3. ", "4. "]
                    .iter()
                    .any(|n| l.starts_with(n))
            })
            .count();
        let explained = prompts.matches("**Trains:**").count();
        if numbered != 3 || explained != 3 {
            problems.push(format!(
                "{name}: {numbered} Try With AI prompts with {explained} explanations (want 3 and 3)"
            ));
        }
        if !text.contains("\n## Read next\n") {
            problems.push(format!("{name}: no \"## Read next\" section"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
