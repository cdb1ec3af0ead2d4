//! Setup/Ubuntu.pm (a Debian.pm subclass: snakeoil_fixup, devttydir and,
//! before 17.10, setup_network come from Debian; set_dns from Base, so the
//! resolved stub symlink at /etc/resolv.conf is replaced by a file).
//!
//! Ubuntu.pm compares versions as Perl numbers: "17.10" is 17.1.

use crate::base::Setup;
use crate::config::perl_num;
use crate::detect::Distro;

impl Setup<'_> {
    fn ubuntu_version(&self) -> (String, f64) {
        match &self.distro {
            Distro::Ubuntu { version } => (version.clone(), perl_num(version)),
            _ => (String::new(), 0.0),
        }
    }

    // Ubuntu.pm template_fixup
    pub fn ubuntu_template_fixup(&self) -> Result<(), String> {
        let (version, v) = self.ubuntu_version();
        if v >= perl_num("17.10") && v < perl_num("23.04") {
            // enable systemd-networkd
            self.ct
                .mkdir("/etc/systemd/system/multi-user.target.wants", None);
            self.ct
                .mkdir("/etc/systemd/system/socket.target.wants", None);
            self.ct.symlink(
                "/lib/systemd/system/systemd-networkd.service",
                "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
            );
            self.ct.symlink(
                "/lib/systemd/system/systemd-networkd.socket",
                "/etc/systemd/system/socket.target.wants/systemd-networkd.socket",
            );
        }
        if v >= perl_num("17.10") {
            // the default netplan config of linuxcontainers.org images
            self.ct.unlink("/etc/netplan/10-lxc.yaml");
        }
        if matches!(version.as_str(), "15.04" | "15.10" | "16.04") {
            self.setup_securetty(&["pts/0"])?;
        }
        if version == "12.04" {
            // suppress udev's log level output
            let f = "/etc/udev/udev.conf";
            let data = self.ct.read(f)?;
            let data = data.replacen("=\"err\"", "=0", 1);
            self.ct.set_contents(f, &data, None)?;
        }
        Ok(())
    }

    // Ubuntu.pm setup_init
    pub fn ubuntu_setup_init(&self) -> Result<(), String> {
        let (version, v) = self.ubuntu_version();
        if v >= perl_num("23.04") {
            self.setup_systemd_preset(&[("systemd-networkd.service", true)])?;
        }
        if v >= perl_num("16.10") {
            self.setup_container_getty_service()?;
        }
        if version == "12.04" || version == "14.04" {
            // upstart gettys
            for i in 1..7 {
                let file = format!("/etc/init/tty{i}.conf");
                if i <= self.conf.tty_count() {
                    let conf = format!(
                        "# tty{i} - getty\n#\n# This service maintains a getty on tty{i} from the point the system is\n\
                         # started until it is shut down again.\n\n\
                         start on stopped rc RUNLEVEL=[2345] and (\n            not-container or\n\
                         \x20           container CONTAINER=lxc or\n            container CONTAINER=lxc-libvirt)\n\n\
                         stop on runlevel [!2345]\n\nrespawn\nexec /sbin/getty -8 38400 tty{i}\n"
                    );
                    self.ct.set_contents(&file, &conf, None)?;
                } else {
                    self.ct.unlink(&file);
                }
            }
        }
        Ok(())
    }

    // Ubuntu.pm setup_network: networkd from 17.10 on, ifupdown before.
    pub fn ubuntu_setup_network(&self) -> Result<(), String> {
        if self.ubuntu_version().1 >= perl_num("17.10") {
            self.setup_systemd_networkd()
        } else {
            self.debian_setup_network()
        }
    }
}
