//! The network namespace each test runs in.
//!
//! Every test calls [`netns`] first. Network namespaces belong to threads: the test's thread
//! moves into a namespace of its own, with only a loopback interface, and every socket, client
//! thread and process it creates afterwards lives there. Tests therefore all use port 8080
//! without colliding, and no packet leaves the namespace.

/// Moves the calling thread into a new network namespace with loopback up.
pub fn netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): the end-to-end tests need root (or CAP_SYS_ADMIN)");
    // SIOCSIFFLAGS on "lo" through any socket of the namespace.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
    unsafe { libc::close(fd) };
    assert_eq!(
        rc,
        0,
        "cannot bring lo up: {}",
        std::io::Error::last_os_error()
    );
}
