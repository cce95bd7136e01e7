#!/bin/busybox sh
# The guest's first process. It mounts what the balancer and the tests read, loads the
# kernel modules it was given, runs
# `balancer check`, then either the core checks listed in /plan (one "TEST-BINARY TEST-NAME" a
# line) or, when the check refuses this kernel, `balancer run` to show its refusal. Every result
# is one line starting with "@@ " on the serial console, which the host reads; everything else
# there is for a person reading the log. Then it powers the machine off.

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin /root
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=0755 run /run
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
# What a Debian host loads on demand and this guest cannot (no module tree): sock_diag.
for m in /modules/*.ko; do
    [ -e "$m" ] && { insmod "$m" || echo "@@ insmod-failed $m"; }
done

now() { cut -d' ' -f1 /proc/uptime; }

echo "@@ up $(uname -r) $(now) $(nproc)"

balancer check > /tmp/check.out 2>&1
rc=$?
sed 's/^/@@ check-said /' /tmp/check.out
echo "@@ check $rc"

if [ "$rc" = 0 ]; then
    while read -r bin name; do
        [ -n "$bin" ] || continue
        # Emulation makes the guest several times slower than any host, and a check whose
        # first run fails gets a second; both runs are reported.
        for attempt in 1 2; do
            start=$(now)
            BALANCER_BIN=/bin/balancer RUST_BACKTRACE=0 timeout -s KILL 300 \
                "/tests/$bin" --exact --test-threads=1 "$name" > /tmp/test.out 2>&1
            rc=$?
            if [ "$rc" != 0 ]; then
                tail -n 40 /tmp/test.out | sed 's/^/@@ test-said /'
            fi
            echo "@@ test $bin $name $rc $start $(now) $attempt"
            [ "$rc" = 0 ] && break
        done
    done < /plan
else
    timeout -s KILL 60 balancer run --listen 127.0.0.1:8080 --workers 1 > /dev/null 2> /tmp/run.err
    rc=$?
    sed 's/^/@@ run-said /' /tmp/run.err
    echo "@@ run $rc"
    # What the verifier said, behind that line.
    RUST_LOG=debug timeout -s KILL 60 balancer run --listen 127.0.0.1:8080 --workers 1 2>&1 \
        | grep -A 400 "the kernel's words" | grep -v '^$' | tail -n 6 | sed 's/^/@@ verifier-said /'

fi

echo "@@ done $(now)"
poweroff -f
