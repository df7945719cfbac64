//! Machine setup done by the agent when it is init of a microVM guest (`gitvm agent --vm`).
//!
//! The stage-one init in the initramfs has loaded the kernel modules, mounted the root disk and
//! moved `/dev`, `/proc` and `/sys` into it. Everything a container runtime would otherwise
//! provide is done here: pseudo-terminals, shared memory, the hostname, the loopback device and,
//! when the host gave the guest a network card, its address, route and resolver.
//!
//! The host passes settings on the kernel command line:
//! - `gitvm.hostname=NAME` sets the hostname;
//! - `gitvm.net=user` configures `eth0` for QEMU's user-mode network (guest address
//!   10.0.2.15/24, gateway 10.0.2.2, resolver 10.0.2.3).

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Guest address on QEMU's user-mode network.
const USER_NET_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Netmask of QEMU's user-mode network.
const USER_NET_MASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// Gateway of QEMU's user-mode network, which also reaches the host.
const USER_NET_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// DNS server of QEMU's user-mode network.
const USER_NET_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// Settings read from the kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestSettings {
    /// Hostname to set.
    pub hostname: Option<String>,
    /// Whether to configure `eth0` for QEMU's user-mode network.
    pub user_net: bool,
}

impl GuestSettings {
    /// Parses the `gitvm.*` parameters of a kernel command line; others are ignored.
    pub fn parse(cmdline: &str) -> Self {
        let mut settings = Self::default();
        for word in cmdline.split_whitespace() {
            if let Some(name) = word.strip_prefix("gitvm.hostname=") {
                settings.hostname = Some(name.to_owned());
            } else if word == "gitvm.net=user" {
                settings.user_net = true;
            }
        }
        settings
    }
}

/// Prepares the guest machine. Steps that fail are logged and skipped, so that the host can
/// still reach the agent and read the log.
pub fn prepare() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let settings = GuestSettings::parse(&cmdline);

    for (what, result) in [
        ("mount /dev/pts", mount_devpts()),
        (
            "mount /dev/shm",
            mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777"),
        ),
        ("link /dev/fd", link_dev_fds()),
        ("bring up lo", interface_up("lo", None)),
    ] {
        if let Err(error) = result {
            tracing::warn!(%error, "guest setup: cannot {what}");
        }
    }

    if let Some(hostname) = &settings.hostname {
        // SAFETY: the pointer and length describe `hostname`'s bytes.
        if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
            let error = io::Error::last_os_error();
            tracing::warn!(%error, hostname, "guest setup: cannot set the hostname");
        }
    }

    if settings.user_net {
        let result = interface_up("eth0", Some((USER_NET_ADDRESS, USER_NET_MASK)))
            .and_then(|()| add_default_route(USER_NET_GATEWAY))
            .and_then(|()| {
                std::fs::write("/etc/resolv.conf", format!("nameserver {USER_NET_DNS}\n"))
            });
        if let Err(error) = result {
            tracing::warn!(%error, "guest setup: cannot configure eth0");
        }
    }
}

/// Sets the wall clock, which stops while a snapshot is saved or the guest is paused.
pub fn set_clock(unix_seconds: i64, nanos: u32) -> io::Result<()> {
    let time = libc::timespec {
        tv_sec: unix_seconds,
        tv_nsec: i64::from(nanos),
    };
    // SAFETY: `time` is a valid timespec for the duration of the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `RNDADDENTROPY` of `linux/random.h`: adds bytes to the input pool and credits their entropy.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG` of `linux/random.h`: reseeds the kernel's generator from the input pool.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Gives a restored guest its own hostname and reseeds the kernel's random generator with
/// `entropy` from the host, so that restores of one snapshot stop producing the same numbers.
pub fn set_identity(hostname: &str, entropy: &[u8]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `hostname`'s bytes.
    if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }

    // struct rand_pool_info: entropy_count in bits, buf_size in bytes, then the bytes.
    let mut info: Vec<u8> = Vec::with_capacity(8 + entropy.len());
    let bits = i32::try_from(entropy.len() * 8).unwrap_or(i32::MAX);
    let size = i32::try_from(entropy.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(entropy);
    let random = std::fs::File::options().write(true).open("/dev/urandom")?;
    // SAFETY: `info` is a complete rand_pool_info; the ioctl only reads it.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Decodes hex digits; `None` when `text` is not hex.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let source = CString::new(source)?;
    let target_c = CString::new(target)?;
    let fstype = CString::new(fstype)?;
    let data = CString::new(data)?;
    // SAFETY: every pointer is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    match rc {
        0 => Ok(()),
        _ => {
            let error = io::Error::last_os_error();
            // Mounted already, such as after a restart of the agent.
            if error.raw_os_error() == Some(libc::EBUSY) {
                return Ok(());
            }
            Err(io::Error::new(error.kind(), format!("{target}: {error}")))
        }
    }
}

fn mount_devpts() -> io::Result<()> {
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    replace_with_symlink("pts/ptmx", "/dev/ptmx")
}

/// Creates the links a container runtime would create in `/dev`, which devtmpfs lacks.
fn link_dev_fds() -> io::Result<()> {
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            std::os::unix::fs::symlink(target, link)?;
        }
    }
    Ok(())
}

fn replace_with_symlink(target: &str, link: &str) -> io::Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(metadata) if metadata.file_type().is_symlink() => return Ok(()),
        Ok(_) => std::fs::remove_file(link)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link)
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that no other value owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size, and every bit pattern is valid.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data, valid when zeroed.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name} is too long"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(request)
}

fn ioctl<T>(
    socket: &OwnedFd,
    request: libc::c_ulong,
    argument: &mut T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `argument` is the structure this ioctl request expects.
    if unsafe { libc::ioctl(socket.as_raw_fd(), request, argument as *mut T) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // A route that exists already is what was asked for.
    if request == libc::SIOCADDRT && error.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(io::Error::new(error.kind(), format!("{what}: {error}")))
}

/// Brings interface `name` up, first giving it `address` when set.
fn interface_up(name: &str, address: Option<(Ipv4Addr, Ipv4Addr)>) -> io::Result<()> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the guest has no network interface {name}"),
        ));
    }
    let socket = inet_socket()?;
    if let Some((address, mask)) = address {
        let mut request = ifreq(name)?;
        request.ifr_ifru.ifru_addr = sockaddr_in(address);
        ioctl(&socket, libc::SIOCSIFADDR, &mut request, "set address")?;
        let mut request = ifreq(name)?;
        request.ifr_ifru.ifru_netmask = sockaddr_in(mask);
        ioctl(&socket, libc::SIOCSIFNETMASK, &mut request, "set netmask")?;
    }
    let mut request = ifreq(name)?;
    ioctl(&socket, libc::SIOCGIFFLAGS, &mut request, "read flags")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(&socket, libc::SIOCSIFFLAGS, &mut request, "set flags")
}

fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let socket = inet_socket()?;
    // SAFETY: rtentry is plain data, valid when zeroed.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_in(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    ioctl(&socket, libc::SIOCADDRT, &mut route, "add default route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gitvm_parameters_and_ignores_others() {
        let settings =
            GuestSettings::parse("console=ttyS0 quiet gitvm.hostname=sb-1 gitvm.net=user panic=-1");
        assert_eq!(settings.hostname.as_deref(), Some("sb-1"));
        assert!(settings.user_net);

        let settings = GuestSettings::parse("console=ttyS0 gitvm.net=none");
        assert_eq!(settings, GuestSettings::default());
    }
}
