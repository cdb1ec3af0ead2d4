//! linuxcontainers.org's image index, as incus and LXD read it (lxc/incus
//! `shared/simplestreams`): `streams/v1/index.json` lists product files by
//! datatype (`image-downloads` → `streams/v1/images.json`); a products file
//! maps `distro:release:arch:variant` to versions keyed by a date serial
//! (`20250601_02:06`, so the newest sorts last), each with items by name
//! whose `ftype` says what they are (`root.tar.xz` for the rootfs tarball
//! `lxc-create -t download` unpacks), with `path` (below the server), `size`
//! and `sha256`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `streams/v1/index.json`.
#[derive(Debug, Deserialize)]
pub(crate) struct Stream {
    pub index: BTreeMap<String, StreamIndex>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamIndex {
    pub datatype: String,
    pub path: String,
    #[serde(default)]
    pub products: Vec<String>,
}

/// A products file (`images.json`).
#[derive(Debug, Deserialize)]
pub(crate) struct Products {
    pub products: BTreeMap<String, Product>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Product {
    #[serde(default)]
    pub versions: BTreeMap<String, Version>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Version {
    #[serde(default)]
    pub items: BTreeMap<String, Item>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Item {
    pub ftype: String,
    pub path: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub size: u64,
}

/// The rootfs tarball's item type.
pub(crate) const ROOTFS_FTYPE: &str = "root.tar.xz";

/// The product key for an image: `rockylinux:9:amd64:default`.
pub(crate) fn product_key(image: &str, arch: &str, variant: &str) -> String {
    let (distro, release) = image.split_once('/').unwrap_or((image, ""));
    format!("{distro}:{release}:{arch}:{variant}")
}

/// The path of the products file that lists `key`, from the stream index.
pub(crate) fn products_path(stream: &Stream, key: &str) -> Result<String, String> {
    let downloads: Vec<&StreamIndex> = stream
        .index
        .values()
        .filter(|i| i.datatype == "image-downloads")
        .collect();
    downloads
        .iter()
        .find(|i| i.products.iter().any(|p| p == key))
        .or_else(|| downloads.first())
        .map(|i| i.path.clone())
        .ok_or_else(|| "lists no image-downloads products file".to_owned())
}

/// The newest version of `key` (or `serial`) and its rootfs item.
pub(crate) fn select(
    products: &Products,
    key: &str,
    serial: Option<&str>,
) -> Result<(String, Item), String> {
    let Some(product) = products.products.get(key) else {
        let close = super::close_matches(key, products.products.keys().map(String::as_str));
        return Err(match close.is_empty() {
            true => format!(
                "no image {key}; it lists {} products",
                products.products.len()
            ),
            false => format!("no image {key}; close matches: {}", close.join(", ")),
        });
    };
    let with_rootfs = |v: &Version| v.items.values().find(|i| i.ftype == ROOTFS_FTYPE).cloned();
    match serial {
        Some(s) => {
            let v = product.versions.get(s).ok_or_else(|| {
                let have: Vec<&str> = product.versions.keys().map(String::as_str).collect();
                format!("{key} has no version {s:?}; it lists {}", have.join(", "))
            })?;
            let item = with_rootfs(v)
                .ok_or_else(|| format!("{key} version {s} has no {ROOTFS_FTYPE} item"))?;
            Ok((s.to_owned(), item))
        }
        // Serials are dates, so the last key is the newest; a version
        // without a rootfs tarball (only squashfs or a VM disk) is skipped.
        None => product
            .versions
            .iter()
            .rev()
            .find_map(|(serial, v)| with_rootfs(v).map(|i| (serial.clone(), i)))
            .ok_or_else(|| format!("{key} has no version with a {ROOTFS_FTYPE} item")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGES: &str = r#"{
      "content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
      "products": {
        "rockylinux:9:amd64:default": {
          "aliases": "rockylinux/9/default,rockylinux/9", "arch": "amd64", "os": "Rockylinux",
          "release": "9", "release_title": "9", "variant": "default",
          "versions": {
            "20250530_02:06": {"items": {
              "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "images/rockylinux/9/amd64/default/20250530_02:06/incus.tar.xz", "size": 1, "sha256": "aa"},
              "root.tar.xz": {"ftype": "root.tar.xz", "path": "images/rockylinux/9/amd64/default/20250530_02:06/rootfs.tar.xz", "size": 2, "sha256": "bb"}}},
            "20250601_02:06": {"items": {
              "root.tar.xz": {"ftype": "root.tar.xz", "path": "images/rockylinux/9/amd64/default/20250601_02:06/rootfs.tar.xz", "size": 3, "sha256": "cc"}}},
            "20250602_02:06": {"items": {
              "root.squashfs": {"ftype": "squashfs", "path": "x.squashfs", "size": 4}}}
          }
        },
        "rockylinux:9:amd64:cloud": {"versions": {}},
        "rockylinux:8:amd64:default": {"versions": {}}
      }
    }"#;

    #[test]
    fn newest_version_with_a_rootfs_or_the_pinned_one() {
        let p: Products = serde_json::from_str(IMAGES).unwrap();
        let key = product_key("rockylinux/9", "amd64", "default");
        assert_eq!(key, "rockylinux:9:amd64:default");
        let (serial, item) = select(&p, &key, None).unwrap();
        assert_eq!(serial, "20250601_02:06");
        assert_eq!(item.sha256.as_deref(), Some("cc"));
        let (_, item) = select(&p, &key, Some("20250530_02:06")).unwrap();
        assert!(item.path.ends_with("20250530_02:06/rootfs.tar.xz"));
        let e = select(&p, &key, Some("2024")).unwrap_err();
        assert!(
            e.starts_with(
                "rockylinux:9:amd64:default has no version \"2024\"; it lists 20250530_02:06"
            ),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_image_lists_close_ones() {
        let p: Products = serde_json::from_str(IMAGES).unwrap();
        let e = select(&p, "rockylinux:10:amd64:default", None).unwrap_err();
        assert_eq!(
            e,
            "no image rockylinux:10:amd64:default; close matches: rockylinux:8:amd64:default, rockylinux:9:amd64:default, rockylinux:9:amd64:cloud"
        );
    }

    #[test]
    fn the_stream_names_the_products_file() {
        let s: Stream = serde_json::from_str(
            r#"{"format": "index:1.0", "index": {"images": {"datatype": "image-downloads",
               "path": "streams/v1/images.json", "products": ["rockylinux:9:amd64:default"]}}}"#,
        )
        .unwrap();
        assert_eq!(
            products_path(&s, "rockylinux:9:amd64:default").unwrap(),
            "streams/v1/images.json"
        );
    }
}
