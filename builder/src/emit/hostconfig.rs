//! Host-side container configuration. K3s in a container needs settings only
//! the host can grant (AppArmor, device access, /dev/kmsg, nesting); the
//! first-boot agent cannot change them from inside, so every template ships
//! with the lines to add.

/// Which kind of Proxmox container the lines are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostConfigVariant {
    Privileged,
    Unprivileged,
}

impl HostConfigVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            HostConfigVariant::Privileged => "privileged",
            HostConfigVariant::Unprivileged => "unprivileged",
        }
    }
}

/// Lines for `/etc/pve/lxc/<vmid>.conf` on the Proxmox host.
pub fn pve_config(template_name: &str, variant: HostConfigVariant) -> String {
    let mut s = format!(
        "# Host-side settings for a K3s node made from {template_name} ({} container).\n\
         # Append to /etc/pve/lxc/<vmid>.conf on the Proxmox host after `pct create`\n\
         # and before the first `pct start`; the container cannot grant these itself.\n",
        variant.as_str()
    );
    match variant {
        HostConfigVariant::Privileged => s.push_str(
            "# Create it with: pct create <vmid> local:vztmpl/<template> --unprivileged 0 ...\n\
             features: nesting=1,fuse=1\n",
        ),
        HostConfigVariant::Unprivileged => s.push_str(
            "# Create it with: pct create <vmid> local:vztmpl/<template> --unprivileged 1 ...\n\
             # keyctl lets containerd use session keyrings inside a user namespace.\n\
             features: nesting=1,keyctl=1,fuse=1\n",
        ),
    }
    s.push_str(
        "# containerd and runc need to set up their own AppArmor and seccomp profiles.\n\
         lxc.apparmor.profile: unconfined\n\
         # Pods need all devices (cgroup v2 device controller).\n\
         lxc.cgroup2.devices.allow: a\n\
         # Keep every capability; the kubelet and kube-proxy use them.\n\
         lxc.cap.drop:\n\
         # kube-proxy and the kubelet write under /proc/sys and /sys.\n\
         lxc.mount.auto: proc:rw sys:rw cgroup:rw\n\
         # The kubelet reads /dev/kmsg; LXC does not create it.\n\
         lxc.mount.entry: /dev/kmsg dev/kmsg none defaults,bind,create=file\n\
         # K3s refuses to run with swap on by default.\n\
         swap: 0\n",
    );
    s
}

/// The same settings in raw LXC syntax, for `lxc-start` hosts (privileged).
pub fn lxc_config(template_name: &str) -> String {
    format!(
        "# Host-side settings for a K3s node made from {template_name}, raw LXC syntax.\n\
         # Include from /var/lib/lxc/<name>/config (lxc.include = <this file>) for\n\
         # a privileged container started with lxc-start.\n\
         lxc.apparmor.profile = unconfined\n\
         lxc.cgroup2.devices.allow = a\n\
         # The same for hosts still on the cgroup v1 device controller.\n\
         lxc.cgroup.devices.allow = a\n\
         lxc.cap.drop =\n\
         lxc.mount.auto = proc:rw sys:rw cgroup:rw\n\
         lxc.mount.entry = /dev/kmsg dev/kmsg none defaults,bind,create=file\n\
         lxc.init.cmd = /sbin/init\n\
         # A devpts instance with room for containerd's exec TTYs.\n\
         lxc.pty.max = 1024\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pve_lines_cover_what_k3s_needs() {
        for v in [
            HostConfigVariant::Privileged,
            HostConfigVariant::Unprivileged,
        ] {
            let c = pve_config("t.tar.zst", v);
            for needle in [
                "/etc/pve/lxc/<vmid>.conf",
                "lxc.apparmor.profile: unconfined",
                "lxc.cgroup2.devices.allow: a",
                "lxc.mount.auto: proc:rw sys:rw",
                "dev/kmsg",
                "nesting=1",
                "fuse=1",
            ] {
                assert!(c.contains(needle), "{v:?} lacks {needle}:\n{c}");
            }
            // Every non-comment line is `key: value` (or an empty value).
            for line in c.lines().filter(|l| !l.starts_with('#')) {
                assert!(line.contains(':'), "bad line {line:?}");
            }
        }
        assert!(pve_config("t", HostConfigVariant::Unprivileged).contains("keyctl=1"));
        assert!(!pve_config("t", HostConfigVariant::Privileged).contains("keyctl=1"));
    }

    #[test]
    fn lxc_lines_use_raw_syntax() {
        let c = lxc_config("t.tar.zst");
        for line in c.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("lxc.") && line.contains(" ="), "{line:?}");
        }
    }
}
