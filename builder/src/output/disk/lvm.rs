//! Find the root LV of an LVM2 physical volume from the PV's own on-disk
//! metadata, without LVM activation.
//!
//! Why not `vgchange -ay`: activation needs device-mapper (build hosts and
//! containers often lack its targets), and it would make the image's VG
//! known to the build host — a Rocky host runs its own VG `rocky`, the same
//! name as the image's. Reading the metadata touches neither: the root LV's
//! extents are mapped to a byte range of the PV, and that range is
//! loop-mounted like a plain partition. Only a linear LV whose extents are
//! contiguous on this one PV can be mapped so; anything else is refused.
//!
//! Layout (lvm2 `lib/format_text/layout.h`, `lib/label/label.h`): a label
//! sector (`LABELONE`, type `LVM2 001`) in one of the first four sectors
//! points at the `pv_header` (PV uuid, data areas, metadata areas); the
//! metadata area starts with an `mda_header` whose first `raw_locn` locates
//! the current VG text in a ring buffer. The text is lvm2's config syntax
//! (`lib/config/config.c`), what `vgcfgbackup` writes.

use anyhow::{bail, Context, Result};

/// The root LV as a byte range of its PV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvMap {
    pub vg: String,
    pub lv: String,
    /// Byte offset of the LV's first extent from the start of the PV.
    pub offset: u64,
    pub size: u64,
}

const SECTOR: usize = 512;
const LABEL_MAGIC: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// The mda header's own size; the ring buffer's text starts after it.
const MDA_HEADER_SIZE: u64 = 512;
/// Bytes to read from the start of a PV for [`metadata_location`].
pub const LABEL_PROBE_LEN: usize = 4 * SECTOR;
/// Upper bound on a VG text we read (lvm2's default metadata area is 1 MiB).
const MAX_TEXT: u64 = 64 << 20;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The PV uuid (32 characters, no dashes) and the byte offset of its first
/// metadata area, from the first [`LABEL_PROBE_LEN`] bytes of the PV.
pub fn metadata_location(head: &[u8]) -> Result<(String, u64)> {
    let label = (0..4)
        .map(|s| s * SECTOR)
        .find(|&o| head.get(o..o + 8) == Some(LABEL_MAGIC))
        .context("no LVM2 label in the first four sectors")?;
    if head.get(label + 24..label + 32) != Some(LABEL_TYPE) {
        bail!("the LVM label is not of type `LVM2 001`");
    }
    let pvh = label + u32_at(head, label + 20).context("truncated LVM label")? as usize;
    let uuid = head
        .get(pvh..pvh + 32)
        .context("truncated PV header")?
        .iter()
        .map(|&b| b as char)
        .collect::<String>();
    // Data areas, a zero entry, then metadata areas, a zero entry.
    let mut at = pvh + 40;
    let mut lists = 0;
    loop {
        let off = u64_at(head, at).context("truncated PV header area list")?;
        let size = u64_at(head, at + 8).context("truncated PV header area list")?;
        at += 16;
        if off == 0 && size == 0 {
            lists += 1;
            if lists == 2 {
                bail!("the PV has no metadata area (pvcreate --metadatacopies 0)");
            }
            continue;
        }
        if lists == 1 {
            return Ok((uuid, off));
        }
    }
}

/// Where the VG text sits, from the `mda_header` at the start of a metadata
/// area (`mda` holds at least its first 512 bytes): ranges relative to the
/// metadata area's start, two when the text wraps around the ring.
pub fn text_ranges(mda: &[u8]) -> Result<Vec<(u64, u64)>> {
    if mda.get(4..20) != Some(MDA_MAGIC) {
        bail!("the LVM metadata area has no mda header");
    }
    let area = u64_at(mda, 32).context("truncated mda header")?;
    let off = u64_at(mda, 40).context("truncated mda header")?;
    let size = u64_at(mda, 48).context("truncated mda header")?;
    if off == 0 || size == 0 {
        bail!("the LVM metadata area holds no VG metadata");
    }
    if size > MAX_TEXT || off >= area || area < MDA_HEADER_SIZE {
        bail!("the LVM metadata location is out of range (offset {off}, size {size}, area {area})");
    }
    let first = size.min(area - off);
    let mut out = vec![(off, first)];
    if first < size {
        out.push((MDA_HEADER_SIZE, size - first));
    }
    Ok(out)
}

/// A value in lvm2's config syntax.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Num(i64),
    List(Vec<Value>),
    Section(Vec<(String, Value)>),
}

impl Value {
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn num(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    fn sections(&self) -> Vec<(&str, &Value)> {
        match self {
            Value::Section(items) => items
                .iter()
                .filter(|(_, v)| matches!(v, Value::Section(_)))
                .map(|(k, v)| (k.as_str(), v))
                .collect(),
            _ => Vec::new(),
        }
    }
    fn has_flag(&self, key: &str, flag: &str) -> bool {
        matches!(self.get(key), Some(Value::List(l)) if l.contains(&Value::Str(flag.into())))
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            if c == b'#' {
                while self.s.get(self.i).is_some_and(|&c| c != b'\n') {
                    self.i += 1;
                }
            } else if c.is_ascii_whitespace() || c == 0 {
                self.i += 1;
            } else {
                break;
            }
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.s.get(self.i).copied()
    }
    fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek() != Some(c) {
            bail!("expected `{}` at byte {}", c as char, self.i);
        }
        self.i += 1;
        Ok(())
    }
    fn ident(&mut self) -> Result<String> {
        self.skip();
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || b"_-+.".contains(&c))
        {
            self.i += 1;
        }
        if start == self.i {
            bail!("expected a name at byte {}", self.i);
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    /// `name = value` and `name { … }` items up to `}` or the end.
    fn items(&mut self, top: bool) -> Result<Vec<(String, Value)>> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None if top => return Ok(out),
                None => bail!("unterminated section"),
                Some(b'}') if !top => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => {}
            }
            let key = self.ident()?;
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    out.push((key, Value::Section(self.items(false)?)));
                }
                Some(b'=') => {
                    self.i += 1;
                    out.push((key, self.value()?));
                }
                _ => bail!("expected `=` or `{{` after `{key}` at byte {}", self.i),
            }
        }
    }
    fn value(&mut self) -> Result<Value> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                let mut v = Vec::new();
                loop {
                    match self.s.get(self.i) {
                        None => bail!("unterminated string"),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            self.i += 1;
                            v.push(*self.s.get(self.i).context("unterminated string")?);
                        }
                        Some(&c) => v.push(c),
                    }
                    self.i += 1;
                }
                self.i += 1;
                Ok(Value::Str(String::from_utf8_lossy(&v).into_owned()))
            }
            Some(b'[') => {
                self.i += 1;
                let mut l = Vec::new();
                loop {
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(Value::List(l));
                    }
                    if !l.is_empty() {
                        self.expect(b',')?;
                    }
                    l.push(self.value()?);
                }
            }
            _ => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|&c| c.is_ascii_digit() || c == b'-' || c == b'.')
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                // lvm2 writes floats only for values we never read.
                let n = t.split('.').next().unwrap_or("").parse().ok();
                n.map(Value::Num)
                    .with_context(|| format!("expected a value at byte {start}"))
            }
        }
    }
}

fn parse(text: &str) -> Result<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    Ok(Value::Section(p.items(true)?))
}

/// The root LV in VG metadata `text` (as `vgcfgbackup` writes it) of the PV
/// whose uuid is `pv_uuid` (dashes ignored): LV `root` if there is one
/// (Rocky, RHEL, Fedora name it so), else the only visible LV.
pub fn root_lv(text: &str, pv_uuid: &str) -> Result<LvMap> {
    let tree = parse(text).context("parsing the LVM metadata")?;
    let (vg_name, vg) = tree
        .sections()
        .into_iter()
        .find(|(_, s)| s.get("physical_volumes").is_some())
        .context("the LVM metadata names no volume group")?;
    let extent = vg
        .num("extent_size")
        .filter(|n| *n > 0)
        .context("the VG has no extent_size")? as u64
        * SECTOR as u64;
    let pvs = vg
        .get("physical_volumes")
        .map(Value::sections)
        .unwrap_or_default();
    let plain = |s: &str| s.replace('-', "");
    let Some((pv_name, pv)) = pvs
        .iter()
        .find(|(_, p)| p.str("id").map(plain) == Some(plain(pv_uuid)))
    else {
        bail!("VG {vg_name}'s metadata does not list this PV ({pv_uuid})");
    };
    if pvs.len() != 1 {
        bail!(
            "VG {vg_name} spans {} physical volumes; only a VG on the root partition alone can be \
             edited offline",
            pvs.len()
        );
    }
    let pe_start = pv.num("pe_start").context("the PV has no pe_start")? as u64 * SECTOR as u64;
    let lvs = vg
        .get("logical_volumes")
        .map(Value::sections)
        .unwrap_or_default();
    let visible: Vec<&(&str, &Value)> = lvs
        .iter()
        .filter(|(_, l)| l.has_flag("status", "VISIBLE"))
        .collect();
    let (lv_name, lv) =
        match visible.iter().find(|(n, _)| *n == "root") {
            Some(l) => **l,
            None if visible.len() == 1 => *visible[0],
            None => bail!(
            "VG {vg_name} has no LV named `root` and {} visible LVs ({}); cannot tell which is \
             the root",
            visible.len(),
            visible.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
        };
    let mut segs: Vec<(i64, i64, i64)> = Vec::new();
    for (name, seg) in lv.sections() {
        let kind = seg.str("type").unwrap_or("?");
        let stripes = match seg.get("stripes") {
            Some(Value::List(l)) => l.as_slice(),
            _ => &[],
        };
        match (kind, seg.num("stripe_count"), stripes) {
            ("striped", Some(1), [Value::Str(pv_ref), Value::Num(pe)]) if pv_ref == pv_name => {
                let start = seg
                    .num("start_extent")
                    .context("segment without start_extent")?;
                let count = seg
                    .num("extent_count")
                    .context("segment without extent_count")?;
                segs.push((start, count, *pe));
            }
            _ => bail!(
                "LV {vg_name}/{lv_name} {name} is `{kind}` with {} stripe(s); only a linear LV \
                 can be edited offline",
                seg.num("stripe_count").unwrap_or(0)
            ),
        }
    }
    segs.sort();
    let Some(&(first_le, _, first_pe)) = segs.first() else {
        bail!("LV {vg_name}/{lv_name} has no segments");
    };
    let mut next = (first_le, first_pe);
    for &(le, count, pe) in &segs {
        if (le, pe) != next || count <= 0 {
            bail!(
                "LV {vg_name}/{lv_name}'s extents are not contiguous on the PV; it cannot be \
                 mapped without device-mapper"
            );
        }
        next = (le + count, pe + count);
    }
    if first_le != 0 || first_pe < 0 {
        bail!("LV {vg_name}/{lv_name} does not start at its first extent");
    }
    Ok(LvMap {
        vg: vg_name.to_owned(),
        lv: lv_name.to_owned(),
        offset: pe_start + first_pe as u64 * extent,
        size: (next.0 - first_le) as u64 * extent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `vgcfgbackup` wrote for `vgcreate rocky` + `lvcreate -n root -l
    /// 100%FREE` (lvm2 2.03.16), trimmed of ids that do not matter.
    const ROCKY: &str = r#"# Generated by LVM2 version 2.03.16(2) (2022-05-18)
contents = "Text Format Volume Group"
version = 1

rocky {
	id = "Yd1Ylc-0000-0000-0000-0000-0000-000000"
	seqno = 2
	format = "lvm2"			# informational
	status = ["RESIZEABLE", "READ", "WRITE"]
	flags = []
	extent_size = 8192		# 4 Megabytes
	max_lv = 0
	max_pv = 0
	metadata_copies = 0

	physical_volumes {

		pv0 {
			id = "abcdef-ghij-klmn-opqr-stuv-wxyz-012345"
			device = "/dev/loop0"	# Hint only

			status = ["ALLOCATABLE"]
			flags = []
			dev_size = 1228800	# 600 Megabytes
			pe_start = 2048
			pe_count = 149	# 596 Megabytes
		}
	}

	logical_volumes {

		root {
			id = "q1w2e3-0000-0000-0000-0000-0000-000000"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			creation_time = 1764612953	# 2026-12-01 18:15:53 +0000
			creation_host = "build \"host\""
			segment_count = 2

			segment2 {
				start_extent = 100
				extent_count = 49	# 196 Megabytes

				type = "striped"
				stripe_count = 1	# linear

				stripes = [
					"pv0", 110
				]
			}
			segment1 {
				start_extent = 0
				extent_count = 100

				type = "striped"
				stripe_count = 1	# linear

				stripes = [
					"pv0", 10
				]
			}
		}
	}

}
"#;

    #[test]
    fn maps_a_linear_root_lv_across_contiguous_segments() {
        let lv = root_lv(ROCKY, "abcdefghijklmnopqrstuvwxyz012345").unwrap();
        assert_eq!(
            lv,
            LvMap {
                vg: "rocky".into(),
                lv: "root".into(),
                offset: (2048 + 10 * 8192) * 512,
                size: 149 * 8192 * 512,
            }
        );
    }

    #[test]
    fn refuses_what_cannot_be_mapped() {
        let gap = ROCKY.replace("\"pv0\", 110", "\"pv0\", 120");
        let e = root_lv(&gap, "abcdefghijklmnopqrstuvwxyz012345").unwrap_err();
        assert!(e.to_string().contains("not contiguous"), "{e:#}");
        let striped = ROCKY.replacen("stripe_count = 1", "stripe_count = 2", 1);
        let e = root_lv(&striped, "abcdefghijklmnopqrstuvwxyz012345").unwrap_err();
        assert!(e.to_string().contains("only a linear LV"), "{e:#}");
        let e = root_lv(ROCKY, "00000000000000000000000000000000").unwrap_err();
        assert!(e.to_string().contains("does not list this PV"), "{e:#}");
        let two = ROCKY.replace(
            "\t\troot {",
            "\t\thome {\n status = [\"VISIBLE\"]\n }\n\t\tdata {",
        );
        let e = root_lv(&two, "abcdefghijklmnopqrstuvwxyz012345").unwrap_err();
        assert!(e.to_string().contains("no LV named `root`"), "{e:#}");
        assert!(root_lv("rocky {", "x").is_err());
    }

    #[test]
    fn reads_label_and_ring_locations() {
        let mut head = vec![0u8; LABEL_PROBE_LEN];
        head[512..520].copy_from_slice(LABEL_MAGIC);
        head[532..536].copy_from_slice(&32u32.to_le_bytes());
        head[536..544].copy_from_slice(LABEL_TYPE);
        let pvh = 512 + 32;
        head[pvh..pvh + 32].copy_from_slice(b"abcdefghijklmnopqrstuvwxyz012345");
        // One data area, end, one metadata area at 4096, end.
        head[pvh + 40..pvh + 48].copy_from_slice(&(1u64 << 20).to_le_bytes());
        head[pvh + 72..pvh + 80].copy_from_slice(&4096u64.to_le_bytes());
        head[pvh + 80..pvh + 88].copy_from_slice(&(1u64 << 20).to_le_bytes());
        let (uuid, mda) = metadata_location(&head).unwrap();
        assert_eq!(
            (uuid.as_str(), mda),
            ("abcdefghijklmnopqrstuvwxyz012345", 4096)
        );
        assert!(metadata_location(&vec![0u8; LABEL_PROBE_LEN]).is_err());

        let mut mda = vec![0u8; 512];
        mda[4..20].copy_from_slice(MDA_MAGIC);
        mda[32..40].copy_from_slice(&1000u64.to_le_bytes());
        mda[40..48].copy_from_slice(&900u64.to_le_bytes());
        mda[48..56].copy_from_slice(&300u64.to_le_bytes());
        assert_eq!(text_ranges(&mda).unwrap(), vec![(900, 100), (512, 200)]);
        mda[40..48].copy_from_slice(&600u64.to_le_bytes());
        assert_eq!(text_ranges(&mda).unwrap(), vec![(600, 300)]);
    }
}
