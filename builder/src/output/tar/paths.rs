//! Paths inside the image as the targets compare them: normalized
//! (`/etc/x`), with their ancestors, and symlinks resolved lexically inside
//! the rootfs.

/// `./etc/x`, `etc/x/`, `/etc//x` → `/etc/x`; the root (`./`, `.`, `/`) → `/`.
/// Names that are not UTF-8 are compared lossily: the layer only names UTF-8 paths.
pub(crate) fn normalize(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len() + 1);
    for comp in text.split('/').filter(|c| !c.is_empty() && *c != ".") {
        out.push('/');
        out.push_str(comp);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Proper ancestors of a normalized path, shallowest first, root excluded:
/// `/a/b/c` → `/a`, `/a/b`.
pub(crate) fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(|(i, _)| i)
        .filter(|&i| i > 0)
        .map(move |i| &path[..i])
}

/// Where a symlink at `link_path` pointing to `target` leads, as a
/// normalized path inside the image (`..` at the root stays at the root).
pub(crate) fn resolve_link(link_path: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let parent = link_path.rsplit_once('/').map_or("", |(p, _)| p);
        parent.split('/').filter(|c| !c.is_empty()).collect()
    };
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize(b"./etc/x"), "/etc/x");
        assert_eq!(normalize(b"etc/x/"), "/etc/x");
        assert_eq!(normalize(b"/etc//x"), "/etc/x");
        assert_eq!(normalize(b"./"), "/");
        assert_eq!(normalize(b"."), "/");
        assert_eq!(normalize(b"/"), "/");
    }

    #[test]
    fn ancestor_paths() {
        assert_eq!(ancestors("/a/b/c").collect::<Vec<_>>(), ["/a", "/a/b"]);
        assert_eq!(ancestors("/a").count(), 0);
    }

    #[test]
    fn symlink_resolution() {
        assert_eq!(
            resolve_link("/etc/os-release", "../usr/lib/os-release"),
            "/usr/lib/os-release"
        );
        assert_eq!(
            resolve_link("/etc/os-release", "/usr/lib/os-release"),
            "/usr/lib/os-release"
        );
        assert_eq!(resolve_link("/etc/x", "../../../y"), "/y");
        assert_eq!(resolve_link("/etc/x", "./y"), "/etc/y");
    }
}
