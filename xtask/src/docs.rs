//! `cargo xtask docs`: build the book (`docs/`, mdBook) and check every link in it.
//!
//! The check reads the built HTML, so it sees links as a reader does (mdBook has rewritten
//! `.md` to `.html` and the headings to ids). A link inside the book must reach a page and,
//! with `#fragment`, an element of that id. A relative link that leaves the book (to
//! `examples/`, `wit/`) must reach a file or folder of the checkout: `docs/book/` sits at the
//! depth of `docs/src/`, so such a link resolves from the page as it does from its Markdown
//! source. Links with a scheme (`https:`, `mailto:`) are not fetched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The mdBook release CI installs (`.ci/run`); other versions may lay the book out otherwise.
pub const MDBOOK_VERSION: &str = "0.5.4";

pub fn build_and_check() -> Result<(), String> {
    let root = crate::root();
    let docs = root.join("docs");
    let mdbook = std::env::var_os("MDBOOK").unwrap_or_else(|| "mdbook".into());
    let version = Command::new(&mdbook).arg("--version").output();
    match version {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            if !v.contains(MDBOOK_VERSION) {
                eprintln!(
                    "xtask: {} found; the book is checked with mdbook {MDBOOK_VERSION}",
                    v.trim()
                );
            }
        }
        _ => {
            return Err(format!(
                "mdbook is not installed: cargo install mdbook --locked --version {MDBOOK_VERSION} --no-default-features --features search"
            ));
        }
    }
    let mut build = Command::new(&mdbook);
    build.arg("build").arg(&docs);
    crate::run(build, "mdbook build docs")?;
    let book = docs.join("book");
    let broken = check_links(&book, &root)?;
    if broken.is_empty() {
        println!("xtask: every link in {} resolves", book.display());
        Ok(())
    } else {
        for b in &broken {
            eprintln!("broken link: {b}");
        }
        Err(format!("{} broken link(s) in the book", broken.len()))
    }
}

/// Every broken link of the HTML pages under `book`, as `page: href (why)`. `repo` is the
/// checkout links that leave the book are resolved in.
pub fn check_links(book: &Path, repo: &Path) -> Result<Vec<String>, String> {
    let mut pages = Vec::new();
    collect_html(book, &mut pages)?;
    let mut ids: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut texts = Vec::new();
    // mdBook's 404 page is written for the site's root (`<base href="/">`), not for a folder.
    pages.retain(|p| p.file_name().is_none_or(|n| n != "404.html"));
    for page in pages {
        let text =
            std::fs::read_to_string(&page).map_err(|e| format!("{}: {e}", page.display()))?;
        ids.insert(normalize(&page), attribute_values(&text, "id").collect());
        texts.push((page, text));
    }
    let book = normalize(book);
    let repo = normalize(repo);
    let mut broken = Vec::new();
    for (page, text) in &texts {
        let shown = page.strip_prefix(&book).unwrap_or(page).display();
        for link in attribute_values(text, "href").chain(attribute_values(text, "src")) {
            if has_scheme(&link) || link.starts_with("//") {
                continue;
            }
            let (path, fragment) = match link.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                normalize(page)
            } else if path.starts_with('/') {
                broken.push(format!(
                    "{shown}: {link} (absolute paths do not survive hosting)"
                ));
                continue;
            } else {
                normalize(&page.parent().unwrap_or(&book).join(path))
            };
            if !target.starts_with(&book) {
                if !target.starts_with(&repo) || !target.exists() {
                    broken.push(format!("{shown}: {link} (no such file in the checkout)"));
                }
                continue;
            }
            let target = if target.is_dir() {
                target.join("index.html")
            } else {
                target
            };
            match (ids.get(&target), fragment) {
                (None, _) if !target.exists() => {
                    broken.push(format!("{shown}: {link} (no such page)"));
                }
                (Some(page_ids), Some(f)) if !f.is_empty() && !page_ids.contains(f) => {
                    broken.push(format!("{shown}: {link} (no element with id `{f}`)"));
                }
                _ => {}
            }
        }
    }
    Ok(broken)
}

fn collect_html(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_dir() {
            collect_html(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "html") {
            out.push(path);
        }
    }
    Ok(())
}

/// The values of every `name="…"` attribute in `html` (mdBook quotes with `"`).
fn attribute_values(html: &str, name: &str) -> std::vec::IntoIter<String> {
    let needle = format!(" {name}=\"");
    let values: Vec<String> = html
        .match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &html[at + needle.len()..];
            rest.find('"').map(|end| decode(&rest[..end]))
        })
        .collect();
    values.into_iter()
}

/// The few entities and escapes mdBook writes into attribute values.
fn decode(v: &str) -> String {
    let v = v
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'");
    let mut out = Vec::with_capacity(v.len());
    let bytes = v.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn has_scheme(link: &str) -> bool {
    match link.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && !scheme.contains(['/', '#', '?', '.'])
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-".contains(c))
        }
        None => false,
    }
}

/// `a/b/../c` as `a/c`, without touching the file system (targets may not exist).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pages_anchors_and_outside_files_are_reported() {
        let tmp = std::env::temp_dir().join(format!("xtask-docs-{}", std::process::id()));
        let repo = tmp.join("repo");
        let book = repo.join("docs/book");
        std::fs::create_dir_all(book.join("guide")).unwrap();
        std::fs::create_dir_all(repo.join("examples")).unwrap();
        std::fs::write(repo.join("examples/a.toml"), "").unwrap();
        std::fs::write(
            book.join("index.html"),
            r##"<h2 id="top">x</h2>
<a href="guide/page.html#usage">ok</a> <a href="guide/page.html#nowhere">bad anchor</a>
<a href="guide/missing.html">bad page</a> <a href="#top">ok</a> <a href="#gone">bad</a>
<a href="../../examples/a.toml">ok</a> <a href="../../examples/b.toml">bad file</a>
<a href="https://example.com/x">external</a> <img src="images/shot.png">"##,
        )
        .unwrap();
        std::fs::write(
            book.join("guide/page.html"),
            r#"<h1 id="usage">u</h1><a href="../index.html">ok</a>"#,
        )
        .unwrap();
        let broken = check_links(&book, &repo).unwrap();
        std::fs::remove_dir_all(&tmp).ok();
        let hrefs: Vec<&str> = broken
            .iter()
            .map(|b| b.split(' ').nth(1).unwrap())
            .collect();
        assert_eq!(
            hrefs,
            [
                "guide/page.html#nowhere",
                "guide/missing.html",
                "#gone",
                "../../examples/b.toml",
                "images/shot.png"
            ],
            "{broken:#?}"
        );
    }
}
