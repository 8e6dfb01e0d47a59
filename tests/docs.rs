//! The documentation's links: every link in README.md and docs/*.md points into the
//! repository, at a file or directory that exists, and with `#anchor` at a heading of
//! that file (GitHub's slugs). Nothing links outside the repository: an `http:`,
//! `https:` or `mailto:` target, autolink or bare URL fails. Code blocks and code spans
//! are not links, so example URLs in them are left alone.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// One broken link: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    /// 1-based line in the file.
    line: usize,
    message: String,
}

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked: README.md and docs/*.md.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// A fence line (```` ``` ```` or `~~~`, up to three spaces in): its character and length.
fn fence(line: &str) -> Option<(char, usize)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let c = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.chars().take_while(|x| *x == c).count();
    (len >= 3).then_some((c, len))
}

/// `text` with every fenced code block blanked out (its lines kept, empty, so line
/// numbers still hold).
fn without_code_blocks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<(char, usize)> = None;
    for line in text.split('\n') {
        match (open, fence(line)) {
            (None, Some(found)) => open = Some(found),
            (Some((c, len)), Some((c2, len2)))
                if c == c2 && len2 >= len && line.trim().chars().all(|x| x == c) =>
            {
                open = None
            }
            (None, None) => out.push_str(line),
            (Some(_), _) => {}
        }
        out.push('\n');
    }
    out.pop();
    out
}

/// `text` (code blocks already blanked) with every code span blanked out: a run of n
/// backticks up to the next run of exactly n within the same paragraph. Newlines stay.
fn without_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = chars.clone();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' || (i > 0 && chars[i - 1] == '\\') {
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            // A blank line ends the paragraph, and with it any code span.
            if chars[j] == '\n' {
                let rest = chars[j + 1..].iter().take_while(|c| **c != '\n');
                if rest.clone().all(|c| c.is_whitespace()) {
                    break;
                }
            }
            if chars[j] == '`' {
                let other = chars[j..].iter().take_while(|c| **c == '`').count();
                if other == run {
                    close = Some(j + other);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                for c in &mut out[i..end] {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
                i = end;
            }
            None => i += run,
        }
    }
    out.into_iter().collect()
}

/// GitHub's anchor for a heading's text: links reduced to their text, lower case,
/// anything but letters, digits, spaces, `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading.trim();
    // `[text](target)` shows as `text`.
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown document: its headings' slugs (a repeated one gets `-1`,
/// `-2`, ...) and the `id`/`name` of HTML anchors.
fn anchors(text: &str) -> HashSet<String> {
    let text = without_code_blocks(text);
    let lines: Vec<&str> = text.split('\n').collect();
    let mut headings = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start_matches(' ');
        if line.len() - trimmed.len() <= 3 && trimmed.starts_with('#') {
            let level = trimmed.chars().take_while(|c| *c == '#').count();
            let rest = &trimmed[level..];
            if level <= 6 && (rest.is_empty() || rest.starts_with([' ', '\t'])) {
                // A closing run of #s (after a space) is not part of the heading.
                let rest = rest.trim();
                let open = rest.trim_end_matches('#');
                let rest = if open.is_empty() || open.ends_with([' ', '\t']) {
                    open
                } else {
                    rest
                };
                headings.push(rest.trim().to_owned());
                continue;
            }
        }
        // Setext: a line of text underlined with = or -.
        let underline = line.trim();
        let previous = i.checked_sub(1).map(|p| lines[p].trim());
        if !underline.is_empty()
            && (underline.chars().all(|c| c == '=') || underline.chars().all(|c| c == '-'))
            && let Some(previous) = previous
            && !previous.is_empty()
            && !previous.starts_with(['#', '-', '*', '|', '>'])
        {
            headings.push(previous.to_owned());
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = HashSet::new();
    for heading in headings {
        let base = slug(&heading);
        let count = seen.entry(base.clone()).or_insert(0);
        let anchor = if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        };
        *count += 1;
        anchors.insert(anchor);
    }
    for attribute in ["id=\"", "name=\""] {
        let mut rest = text.as_str();
        while let Some(at) = rest.find(attribute) {
            rest = &rest[at + attribute.len()..];
            if let Some(end) = rest.find('"') {
                anchors.insert(rest[..end].to_owned());
            }
        }
    }
    anchors
}

/// `%XX` escapes decoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(Ok(byte)) = hex.map(|h| u8::from_str_radix(h, 16))
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The destination of an inline link starting at `chars[start]` (just after `(`).
fn destination(chars: &[char], start: usize) -> String {
    let mut i = start;
    while i < chars.len() && chars[i] == ' ' {
        i += 1;
    }
    if chars.get(i) == Some(&'<') {
        return chars[i + 1..]
            .iter()
            .take_while(|c| **c != '>' && **c != '\n')
            .collect();
    }
    let mut depth = 0usize;
    let mut target = String::new();
    for &c in &chars[i..] {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => break,
            ')' => depth -= 1,
            c if c.is_whitespace() => break,
            _ => {}
        }
        target.push(c);
    }
    target
}

/// A reference label as matched: lower case, inner whitespace collapsed.
fn label(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The `]` closing the `[` at `open`, within one paragraph.
fn closing_bracket(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            '\n' if chars.get(i + 1) == Some(&'\n') => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Something found in a document, with its 1-based line.
type Located = (usize, String);

/// Every link target in `prose` (code blanked out), with its line, and the references
/// that name no definition.
fn links(prose: &str) -> (Vec<Located>, Vec<Located>) {
    let chars: Vec<char> = prose.chars().collect();
    let line_at = |pos: usize| chars[..pos].iter().filter(|c| **c == '\n').count() + 1;
    // A definition starts its own line, and a paragraph: it follows a blank line,
    // another definition or nothing (it cannot interrupt a paragraph).
    let starts_block = |pos: usize| {
        let start = chars[..pos]
            .iter()
            .rposition(|c| *c == '\n')
            .map_or(0, |n| n + 1);
        if !(chars[start..pos].iter().all(|c| *c == ' ') && pos - start <= 3) {
            return false;
        }
        let Some(end) = start.checked_sub(1) else {
            return true;
        };
        let previous_start = chars[..end]
            .iter()
            .rposition(|c| *c == '\n')
            .map_or(0, |n| n + 1);
        let previous: String = chars[previous_start..end].iter().collect();
        let previous = previous.trim();
        previous.is_empty() || (previous.starts_with('[') && previous.contains("]:"))
    };
    // Definitions first: `[label]: target` at the start of a line.
    let mut definitions: HashMap<String, Located> = HashMap::new();
    let mut brackets = Vec::new();
    for open in 0..chars.len() {
        if chars[open] != '[' || (open > 0 && chars[open - 1] == '\\') {
            continue;
        }
        let Some(close) = closing_bracket(&chars, open) else {
            continue;
        };
        brackets.push((open, close));
        if chars.get(close + 1) == Some(&':') && starts_block(open) {
            let text: String = chars[open + 1..close].iter().collect();
            let target = destination(&chars, close + 2);
            let target = target.trim_start_matches('<').trim_end_matches('>');
            definitions
                .entry(label(&text))
                .or_insert((line_at(open), target.to_owned()));
        }
    }
    let mut found: Vec<Located> = definitions.values().cloned().collect();
    let mut undefined = Vec::new();
    for (open, close) in brackets {
        let line = line_at(open);
        match chars.get(close + 1) {
            Some('(') => found.push((line, destination(&chars, close + 2))),
            Some('[') => {
                let Some(end) = chars[close + 1..]
                    .iter()
                    .position(|c| *c == ']' || *c == '\n')
                    .map(|e| close + 1 + e)
                    .filter(|e| chars[*e] == ']')
                else {
                    continue;
                };
                let named: String = chars[close + 2..end].iter().collect();
                let named = if named.trim().is_empty() {
                    chars[open + 1..close].iter().collect()
                } else {
                    named
                };
                if !definitions.contains_key(&label(&named)) {
                    undefined.push((line, named));
                }
            }
            // Shortcut references (`[label]`) are links only when defined, and then
            // their definition's target is checked above.
            _ => {}
        }
    }
    found.sort();
    (found, undefined)
}

/// Bare or autolinked URLs outside the repository in `prose`, with their lines.
fn outside_urls(prose: &str) -> Vec<Located> {
    let lower = prose.to_ascii_lowercase();
    let mut found = Vec::new();
    for scheme in ["http://", "https://", "mailto:", "www."] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(scheme).map(|a| from + a) {
            from = at + scheme.len();
            let before = lower[..at].chars().next_back();
            // `www.` only at the start of a word; a scheme anywhere (`xhttp://` too).
            if scheme == "www." && before.is_some_and(|c| c.is_alphanumeric() || c == '.') {
                continue;
            }
            let url: String = prose[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, ')' | '>' | '"'))
                .collect();
            let line = prose[..at].matches('\n').count() + 1;
            found.push((line, url));
        }
    }
    found.sort();
    found
}

/// Whether `target` names a scheme (`http:`, `mailto:`, `ftp:`, ...), not a path.
fn has_scheme(target: &str) -> bool {
    match target.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && !scheme.contains(['/', '#', '?'])
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// `path` with `.` and `..` resolved lexically; `None` when it climbs above `root`.
fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts: Vec<Component> = Vec::new();
    for part in relative.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(_) => parts.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    let mut resolved = root.to_path_buf();
    resolved.extend(parts);
    Some(resolved)
}

/// The problems of the links in `text`, the Markdown file at `file` in the repository
/// at `root`. `anchors_of` caches the anchors of the files linked to.
fn check(
    root: &Path,
    file: &Path,
    text: &str,
    anchors_of: &mut HashMap<PathBuf, HashSet<String>>,
) -> Vec<Problem> {
    let prose = without_code_spans(&without_code_blocks(text));
    let mut problems = Vec::new();
    let (found, undefined) = links(&prose);
    for (line, name) in undefined {
        problems.push(Problem {
            line,
            message: format!("reference `[{name}]` has no definition"),
        });
    }
    for (line, url) in outside_urls(&prose) {
        problems.push(Problem {
            line,
            message: format!("`{url}` points outside the repository"),
        });
    }
    let here = file.parent().unwrap_or(root);
    let own_anchors = anchors(text);
    for (line, target) in found {
        let mut fail = |message: String| problems.push(Problem { line, message });
        if target.is_empty() {
            fail("a link without a target".to_owned());
            continue;
        }
        if has_scheme(&target) {
            // http(s) and mailto are reported above as URLs outside the repository.
            let lower = target.to_ascii_lowercase();
            if !["http:", "https:", "mailto:"]
                .iter()
                .any(|s| lower.starts_with(s))
            {
                fail(format!("`{target}` is not a path in the repository"));
            }
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (percent_decode(path), Some(percent_decode(anchor))),
            None => (percent_decode(&target), None),
        };
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            // An anchor in this very document.
            match anchor {
                Some(anchor) if !own_anchors.contains(&anchor) => fail(format!(
                    "`{target}`: no heading with the anchor `#{anchor}`"
                )),
                Some(_) => {}
                None => fail(format!("`{target}`: an empty link")),
            }
            continue;
        }
        let linked = if let Some(from_root) = path.strip_prefix('/') {
            root.join(from_root)
        } else {
            here.join(path)
        };
        let Some(linked) = inside(root, &linked) else {
            fail(format!("`{target}` points outside the repository"));
            continue;
        };
        let in_build_output = linked
            .strip_prefix(root)
            .ok()
            .and_then(|rel| rel.components().next())
            .is_some_and(|first| first.as_os_str() == "target" || first.as_os_str() == ".git");
        if in_build_output || !linked.exists() {
            fail(format!("`{target}`: no such file in the repository"));
            continue;
        }
        let Some(anchor) = anchor else {
            continue;
        };
        if linked.extension().is_none_or(|ext| ext != "md") {
            fail(format!(
                "`{target}`: an anchor into a file that is not Markdown"
            ));
            continue;
        }
        let known = anchors_of.entry(linked.clone()).or_insert_with(|| {
            std::fs::read_to_string(&linked)
                .map(|text| anchors(&text))
                .unwrap_or_default()
        });
        if !known.contains(&anchor) {
            fail(format!(
                "`{target}`: no heading with the anchor `#{anchor}`"
            ));
        }
    }
    problems.sort_by_key(|p| p.line);
    problems
}

#[test]
fn every_link_of_the_documentation_points_into_the_repository() {
    let root = root();
    let mut anchors_of = HashMap::new();
    let mut report = Vec::new();
    let files = documents(&root);
    for required in ["docs/protocol.md", "docs/operations.md", "docs/firefox.md"] {
        assert!(
            files.contains(&root.join(required)),
            "{required} is missing"
        );
    }
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for problem in check(&root, &file, &text, &mut anchors_of) {
            report.push(format!("{name}:{}: {}", problem.line, problem.message));
        }
    }
    assert!(report.is_empty(), "broken links:\n{}", report.join("\n"));
}

/// The checker on a small document of its own (as if it were docs/example.md).
fn check_example(text: &str) -> Vec<Problem> {
    let root = root();
    check(
        &root,
        &root.join("docs").join("example.md"),
        text,
        &mut HashMap::new(),
    )
}

#[test]
fn the_checker_reports_a_link_to_a_missing_file() {
    let problems = check_example("# Example\n\nSee [the guide](no-such-guide.md).\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].line, 3);
    assert!(
        problems[0].message.contains("no-such-guide.md"),
        "{problems:?}"
    );
}

#[test]
fn the_checker_reports_a_missing_anchor_and_accepts_existing_ones() {
    let text = "# Example\n\n## Two words\n\n[here](#two-words) [there](../README.md#two-commands)\n\
                [gone](#three-words) [elsewhere](../README.md#no-such-heading)\n";
    let problems = check_example(text);
    let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(problems.len(), 2, "{messages:?}");
    assert!(messages[0].contains("#three-words"), "{messages:?}");
    assert!(messages[1].contains("#no-such-heading"), "{messages:?}");
    assert!(problems.iter().all(|p| p.line == 6));
}

#[test]
fn the_checker_refuses_links_outside_the_repository_but_not_code() {
    let text = "# Example\n\n[site](https://example.com/) <http://example.org> \
                mailto:ops@example.com and www.example.net\n\n\
                `https://in.a.code.span` is fine, and so is this block:\n\n\
                ```sh\ncurl https://example.com/  # [not](a-link.md)\n```\n\n\
                [up](../../elsewhere.md) [ok](../config.sample.toml) [dir](../src)\n";
    let problems = check_example(text);
    let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(problems.len(), 5, "{messages:?}");
    for outside in [
        "https://example.com/",
        "http://example.org",
        "mailto:ops@example.com",
        "www.example.net",
        "../../elsewhere.md",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(outside)),
            "{outside}: {messages:?}"
        );
    }
    assert!(!messages.iter().any(|m| m.contains("in.a.code.span")));
    assert!(!messages.iter().any(|m| m.contains("a-link.md")));
}

#[test]
fn the_checker_reads_reference_links() {
    let text = "# Example\n\nSee [the sample][sample] and [ops][].\n\n\
                [sample]: ../config.sample.toml\n[ops]: missing-ops.md\n\n[broken][nowhere]\n";
    let problems = check_example(text);
    let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(problems.len(), 2, "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("missing-ops.md")));
    assert!(messages.iter().any(|m| m.contains("[nowhere]")));
}

#[test]
fn a_bracket_and_colon_inside_a_paragraph_is_no_definition() {
    let text = "# Example\n\nThe timeout\n[30 s]: many proxies close sooner.\n";
    assert_eq!(check_example(text), []);
    let text = "# Example\n\n[30 s]: many-proxies.md\n";
    assert_eq!(check_example(text).len(), 1);
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(slug("Two commands"), "two-commands");
    assert_eq!(
        slug("`max_queue_delay` and 503s"),
        "max_queue_delay-and-503s"
    );
    assert_eq!(
        slug("WebPush (RFC 8030): POST /wpush/v1"),
        "webpush-rfc-8030-post-wpushv1"
    );
    assert_eq!(slug("See [the docs](x.md)!"), "see-the-docs");
    let anchors = anchors("# A\n\n## A\n\n```\n# not a heading\n```\n\nSetext\n---\n");
    let mut anchors: Vec<_> = anchors.into_iter().collect();
    anchors.sort();
    assert_eq!(anchors, ["a", "a-1", "setext"]);
}
